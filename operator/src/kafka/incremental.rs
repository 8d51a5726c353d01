//! IncrementalAlterConfigs (KIP-339), which rdkafka 0.39's `AdminClient`
//! does not wrap (it offers only the legacy, whole-set `AlterConfigs`, which
//! replaces every dynamic config at once and would race with other writers). This
//! is a minimal safe wrapper over librdkafka's C API, via `rdkafka-sys`.
//!
//! Blocking: call it from `spawn_blocking`.

use std::{
    ffi::{CStr, CString},
    ptr,
    time::Duration,
};

use rdkafka::types::RDKafkaErrorCode;
use rdkafka_sys as sys;

use super::{failure::AdminFailure, topic::ConfigChange};

/// Frees what librdkafka allocated, on every path.
struct Owned {
    resource: *mut sys::rd_kafka_ConfigResource_t,
    options: *mut sys::rd_kafka_AdminOptions_t,
    queue: *mut sys::rd_kafka_queue_t,
    event: *mut sys::rd_kafka_event_t,
}

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: each pointer is null or was returned by the matching
        // librdkafka constructor and is destroyed exactly once, here.
        unsafe {
            if !self.event.is_null() {
                sys::rd_kafka_event_destroy(self.event);
            }
            if !self.queue.is_null() {
                sys::rd_kafka_queue_destroy(self.queue);
            }
            if !self.options.is_null() {
                sys::rd_kafka_AdminOptions_destroy(self.options);
            }
            if !self.resource.is_null() {
                sys::rd_kafka_ConfigResource_destroy(self.resource);
            }
        }
    }
}

fn c_string(s: &str) -> Result<CString, AdminFailure> {
    CString::new(s).map_err(|_| AdminFailure::rejected(None, format!("{s:?} contains a NUL byte")))
}

/// # Safety
/// `p` is null or a NUL-terminated string valid for the call.
unsafe fn text(p: *const std::ffi::c_char) -> Option<String> {
    // SAFETY: guaranteed by the caller.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// Applies `changes` to topic `topic` in one IncrementalAlterConfigs request.
///
/// # Safety
/// `rk` must be a live librdkafka handle for the whole call (the caller holds
/// the `AdminClient` that owns it).
pub(crate) unsafe fn alter_topic(
    rk: *mut sys::rd_kafka_t,
    topic: &str,
    changes: &[ConfigChange],
    timeout: Duration,
) -> Result<(), AdminFailure> {
    let name = c_string(topic)?;
    let mut owned = Owned {
        resource: ptr::null_mut(),
        options: ptr::null_mut(),
        queue: ptr::null_mut(),
        event: ptr::null_mut(),
    };
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: all pointers passed are valid: C strings live until the end of
    // this function, librdkafka objects are owned by `owned`.
    unsafe {
        owned.resource = sys::rd_kafka_ConfigResource_new(
            sys::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
            name.as_ptr(),
        );
        if owned.resource.is_null() {
            return Err(AdminFailure::rejected(
                None,
                "librdkafka refused the config resource".into(),
            ));
        }
        for change in changes {
            let (key, op, value) = match change {
                ConfigChange::Set { key, value } => (
                    c_string(key)?,
                    sys::rd_kafka_AlterConfigOpType_t::RD_KAFKA_ALTER_CONFIG_OP_TYPE_SET,
                    Some(c_string(value)?),
                ),
                ConfigChange::Delete { key } => (
                    c_string(key)?,
                    sys::rd_kafka_AlterConfigOpType_t::RD_KAFKA_ALTER_CONFIG_OP_TYPE_DELETE,
                    None,
                ),
            };
            let value_ptr = value.as_ref().map_or(ptr::null(), |v| v.as_ptr());
            let error = sys::rd_kafka_ConfigResource_add_incremental_config(
                owned.resource,
                key.as_ptr(),
                op,
                value_ptr,
            );
            if !error.is_null() {
                let code = RDKafkaErrorCode::from(sys::rd_kafka_error_code(error));
                let message = text(sys::rd_kafka_error_string(error)).unwrap_or_default();
                sys::rd_kafka_error_destroy(error);
                return Err(AdminFailure::from_code(code, message));
            }
        }
        owned.options = sys::rd_kafka_AdminOptions_new(
            rk,
            sys::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_INCREMENTALALTERCONFIGS,
        );
        let mut errstr = [0 as std::ffi::c_char; 256];
        sys::rd_kafka_AdminOptions_set_request_timeout(
            owned.options,
            timeout_ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        owned.queue = sys::rd_kafka_queue_new(rk);
        let mut resources = [owned.resource];
        sys::rd_kafka_IncrementalAlterConfigs(rk, resources.as_mut_ptr(), 1, owned.options, owned.queue);
        owned.event = sys::rd_kafka_queue_poll(owned.queue, timeout_ms.saturating_add(5_000));
        if owned.event.is_null() {
            return Err(AdminFailure::from_code(
                RDKafkaErrorCode::OperationTimedOut,
                "IncrementalAlterConfigs got no answer in time".into(),
            ));
        }
        let code = RDKafkaErrorCode::from(sys::rd_kafka_event_error(owned.event));
        if code != RDKafkaErrorCode::NoError {
            let message = text(sys::rd_kafka_event_error_string(owned.event)).unwrap_or_default();
            return Err(AdminFailure::from_code(code, message));
        }
        let result = sys::rd_kafka_event_IncrementalAlterConfigs_result(owned.event);
        if result.is_null() {
            return Err(AdminFailure::rejected(None, "unexpected librdkafka event".into()));
        }
        let mut count = 0usize;
        let results = sys::rd_kafka_IncrementalAlterConfigs_result_resources(result, &mut count);
        for i in 0..count {
            let resource = *results.add(i);
            let code = RDKafkaErrorCode::from(sys::rd_kafka_ConfigResource_error(resource));
            if code != RDKafkaErrorCode::NoError {
                let message = text(sys::rd_kafka_ConfigResource_error_string(resource))
                    .unwrap_or_else(|| code.to_string());
                return Err(AdminFailure::from_code(code, message));
            }
        }
    }
    Ok(())
}
