-- Sample objects for tests/run.lua, shaped as the operator writes status
-- (conditions from streamops_crds::Health::conditions).
local function cond(type_, status, reason, message)
  return { type = type_, status = status, reason = reason, message = message,
           observedGeneration = 1, lastTransitionTime = "2026-11-22T15:00:00Z" }
end
local function meta(generation, annotations)
  return { name = "x", namespace = "default", generation = generation, annotations = annotations }
end

local ready_topic = {
  metadata = meta(1),
  spec = { partitions = 3 },
  status = { observedGeneration = 1, topicName = "clicks", partitions = 3,
             conditions = { cond("Ready", "True", "Synced", "topic clicks has 3 partitions and its configs") } },
}

local M = {}
M.health = {
  { name = "topic without status", kind = "StreamTopic", status = "Progressing",
    obj = { metadata = meta(1), spec = { partitions = 3 } }, message = "observe generation 1" },
  { name = "topic ready", kind = "StreamTopic", status = "Healthy", obj = ready_topic, message = "Synced" },
  { name = "topic ready but stale generation", kind = "StreamTopic", status = "Progressing",
    obj = { metadata = meta(2), spec = ready_topic.spec, status = ready_topic.status }, message = "generation 2" },
  { name = "topic stalled on partition decrease", kind = "StreamTopic", status = "Degraded",
    obj = { metadata = meta(1), spec = { partitions = 1 }, status = { observedGeneration = 1, conditions = {
      cond("Ready", "False", "PartitionDecrease", "Kafka cannot remove partitions (3 -> 1)"),
      cond("Stalled", "True", "PartitionDecrease", "Kafka cannot remove partitions (3 -> 1)") } } },
    message = "PartitionDecrease: Kafka cannot remove partitions" },
  { name = "topic reconciling while broker is down", kind = "StreamTopic", status = "Progressing",
    obj = { metadata = meta(1), spec = { partitions = 3 }, status = { observedGeneration = 1, conditions = {
      cond("Ready", "False", "KafkaUnavailable", "broker 10.244.0.1:9092 unreachable"),
      cond("Reconciling", "True", "KafkaUnavailable", "broker 10.244.0.1:9092 unreachable") } } },
    message = "KafkaUnavailable" },
  { name = "topic paused", kind = "StreamTopic", status = "Suspended",
    obj = { metadata = meta(1, { ["streamops.io/paused"] = "true" }), spec = { partitions = 3 },
            status = ready_topic.status } },

  { name = "job running", kind = "StreamJob", status = "Healthy",
    obj = { metadata = meta(1), spec = {}, status = { observedGeneration = 1, phase = "Running",
      conditions = { cond("Ready", "True", "Running", "4 pods processing") } } } },
  { name = "job savepointing", kind = "StreamJob", status = "Progressing",
    obj = { metadata = meta(2), spec = {}, status = { observedGeneration = 2, phase = "Savepointing",
      conditions = { cond("Ready", "False", "Upgrading", "stop-with-savepoint sp-7"),
                     cond("Reconciling", "True", "Upgrading", "stop-with-savepoint sp-7") } } },
    message = "Savepointing: Upgrading" },
  { name = "job suspended", kind = "StreamJob", status = "Suspended",
    obj = { metadata = meta(1), spec = { state = "suspended" }, status = { observedGeneration = 1,
      phase = "Suspended", lastSavepoint = { id = "sp-9" },
      conditions = { cond("Ready", "True", "Suspended", "stopped with savepoint sp-9") } } },
    message = "sp-9" },
  { name = "job incompatible change", kind = "StreamJob", status = "Degraded",
    obj = { metadata = meta(3), spec = {}, status = { observedGeneration = 3, phase = "Running",
      conditions = { cond("Ready", "False", "IncompatibleChange", "window changed; set restore.allowEmptyState"),
                     cond("Stalled", "True", "IncompatibleChange", "window changed; set restore.allowEmptyState") } } },
    message = "IncompatibleChange" },
  { name = "job failed phase", kind = "StreamJob", status = "Degraded",
    obj = { metadata = meta(1), spec = {}, status = { observedGeneration = 1, phase = "Failed",
      conditions = { cond("Ready", "False", "CrashLoop", "pod 0 restarted 5 times"),
                     cond("Reconciling", "True", "CrashLoop", "pod 0 restarted 5 times") } } } },
}

local running = { metadata = meta(1), spec = { state = "running" }, status = { observedGeneration = 1, phase = "Running" } }
M.discovery = {
  { name = "running job", obj = running,
    disabled = { ["savepoint-now"] = false, suspend = false, resume = true } },
  { name = "suspended job", obj = { metadata = meta(1, { ["streamops.io/suspend"] = "true" }), spec = {},
                                     status = { phase = "Suspended" } },
    disabled = { ["savepoint-now"] = true, suspend = true, resume = false } },
}

local function fresh(annotations)
  return function()
    return { metadata = meta(1, annotations), spec = { state = "running" } }
  end
end
M.actions = {
  { name = "savepoint-now", action = "savepoint-now", obj = fresh(nil), spec_state = "running",
    annotations = { ["streamops.io/savepoint-request"] = "<timestamp>" } },
  { name = "suspend", action = "suspend", obj = fresh({ team = "a" }), spec_state = "running",
    annotations = { ["streamops.io/suspend"] = "true", team = "a" } },
  { name = "resume", action = "resume", obj = fresh({ ["streamops.io/suspend"] = "true" }), spec_state = "running",
    annotations = { ["streamops.io/suspend"] = "<absent>" } },
}
return M
