-- Argo CD health for streamops.io/StreamTopic (requires health-common.lua).
local annotations = (obj.metadata and obj.metadata.annotations) or {}
if annotations["streamops.io/paused"] == "true" then
  return { status = "Suspended", message = "Reconciliation paused (annotation streamops.io/paused)" }
end
return kstatus_health(obj)
