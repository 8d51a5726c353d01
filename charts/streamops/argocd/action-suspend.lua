-- Stops the job with a savepoint; `resume` starts it again from there.
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["streamops.io/suspend"] = "true"
return obj
