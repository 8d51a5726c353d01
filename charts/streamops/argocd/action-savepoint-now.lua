-- Requests a savepoint: any new value of the annotation is a new request.
-- Argo CD has no global `os`: its safe os library (time, date) is reachable
-- only through require (argo-cd v3.6.2 util/lua/oslib_safe.go).
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["streamops.io/savepoint-request"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
