-- Shared by both health checks (Argo CD loads each script on its own, so the
-- build step in tests/run.lua and the argocd-cm snippet inline this file
-- ahead of each kind's script).
--
-- kstatus rules, in order: status not written for this generation yet ->
-- Progressing; Stalled=True -> Degraded (the user must act); Ready=True ->
-- Healthy; Reconciling=True -> Progressing; anything else -> Progressing.

local function condition(obj, type_)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function describe(c)
  if c == nil then
    return ""
  end
  local reason = c.reason or ""
  local message = c.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  end
  return reason .. message
end

function kstatus_health(obj)
  local hs = {}
  local generation = obj.metadata and obj.metadata.generation
  local observed = obj.status and obj.status.observedGeneration
  if observed == nil or (generation ~= nil and observed < generation) then
    hs.status = "Progressing"
    hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
    return hs
  end
  local stalled = condition(obj, "Stalled")
  if stalled ~= nil and stalled.status == "True" then
    hs.status = "Degraded"
    hs.message = describe(stalled)
    return hs
  end
  local ready = condition(obj, "Ready")
  if ready ~= nil and ready.status == "True" then
    hs.status = "Healthy"
    hs.message = describe(ready)
    return hs
  end
  local reconciling = condition(obj, "Reconciling")
  hs.status = "Progressing"
  hs.message = describe(reconciling or ready)
  return hs
end
