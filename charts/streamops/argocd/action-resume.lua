-- Removes the suspend annotation; the job resumes from its last savepoint.
if obj.metadata.annotations ~= nil then
  obj.metadata.annotations["streamops.io/suspend"] = nil
end
return obj
