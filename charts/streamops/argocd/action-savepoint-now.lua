-- Requests a savepoint: any new value of the annotation is a new request.
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["streamops.io/savepoint-request"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
