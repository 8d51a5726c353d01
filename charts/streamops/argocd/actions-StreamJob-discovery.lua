-- Argo CD actions for streamops.io/StreamJob. Actions set annotations, never
-- spec fields: Argo CD self-heal would revert a spec edit made by an action.
local actions = {}
local annotations = (obj.metadata and obj.metadata.annotations) or {}
local suspended = annotations["streamops.io/suspend"] == "true"
local phase = obj.status and obj.status.phase
actions["savepoint-now"] = { disabled = suspended or phase ~= "Running" }
actions["suspend"] = { disabled = suspended }
actions["resume"] = { disabled = not suspended }
return actions
