-- Argo CD health for streamops.io/StreamJob (requires health-common.lua).
local hs = kstatus_health(obj)
local phase = obj.status and obj.status.phase
if hs.status == "Healthy" and phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "Suspended with savepoint " ..
    tostring(obj.status.lastSavepoint and obj.status.lastSavepoint.id or "(none)")
elseif hs.status ~= "Degraded" and phase == "Failed" then
  hs.status = "Degraded"
elseif hs.status == "Progressing" and phase ~= nil then
  hs.message = phase .. ": " .. hs.message
end
return hs
