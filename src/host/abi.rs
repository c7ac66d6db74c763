//! The host calls the filter makes, straight on the proxy-wasm ABI, each returning the host's
//! status instead of panicking on it.
//!
//! The SDK's accessors (`proxy_wasm::hostcalls::*`, and the `Context` methods built on them)
//! panic on any status they don't expect. Envoy returns such a status when a store answer
//! failed after it started arriving (a stall past the callout timeout, an answer over the
//! async client's buffer limit, a connection closed mid-body), and the panic is a trap: the
//! worker's VM is dead, its held requests hang, and every later request on it fails. So every
//! host call a callback reaches goes through here, and a failure is a value the caller
//! handles (a store error, a skipped header). Only `dispatch_http_call` stays the SDK's: it
//! must register the callout with the SDK's dispatcher so the answer reaches the right
//! context, and it panics only on statuses Envoy's `httpCall` never returns (it returns Ok,
//! BadArgument or InternalFailure).

use crate::header_map;
use std::ptr::{null, null_mut};

// The imports the SDK declares too (the same names and signatures), with the status as a
// plain u32: a value outside the SDK's `Status` enum is then not undefined behaviour.
#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_get_log_level(return_level: *mut u32) -> u32;
    fn proxy_call_foreign_function(
        name_data: *const u8,
        name_size: usize,
        arguments_data: *const u8,
        arguments_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
}

const OK: u32 = 0;

/// A host status other than OK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

/// Header maps (of the request, the response, a callout's answer), as the ABI numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Map {
    Request = 0,
    Response = 2,
    CallResponse = 6,
}

/// Buffers, as the ABI numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buffer {
    ResponseBody = 1,
    CallResponseBody = 4,
    PluginConfiguration = 7,
}

fn check(status: u32) -> Result<(), HostError> {
    if status == OK {
        Ok(())
    } else {
        Err(HostError(status))
    }
}

/// Takes ownership of a buffer the host allocated through the module's allocator (the SDK's
/// `proxy_on_memory_allocate`: a `Vec<u8>` of exactly `size` bytes).
///
/// # Safety
/// `data` is null or such a buffer of `size` bytes.
unsafe fn owned(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        // SAFETY: per the contract above.
        unsafe { Vec::from_raw_parts(data, size, size) }
    }
}

/// Bytes `start..start + max` of a buffer; `Ok(None)` when the host has none (not found or
/// empty); `Err` when the host refused (a failed callout answer).
pub fn buffer(kind: Buffer, start: usize, max: usize) -> Result<Option<Vec<u8>>, HostError> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: the host writes a pointer and a length (see `owned`).
    let status = unsafe { proxy_get_buffer_bytes(kind as u32, start, max, &mut data, &mut size) };
    // SAFETY: whatever the status, a non-null pointer is a buffer the host gave us.
    let bytes = unsafe { owned(data, size) };
    match status {
        OK => Ok((!data.is_null()).then_some(bytes)),
        1 => Ok(None), // NotFound
        s => Err(HostError(s)),
    }
}

/// Every header of a map, values as bytes.
pub fn headers(map: Map) -> Result<Vec<(String, Vec<u8>)>, HostError> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: as `buffer`.
    let status = unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) };
    // SAFETY: as `buffer`.
    let bytes = unsafe { owned(data, size) };
    check(status)?;
    header_map::decode(&bytes).ok_or(HostError(u32::MAX))
}

/// One header's value.
pub fn header(map: Map, name: &str) -> Result<Option<Vec<u8>>, HostError> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: the host reads `name` within its length; the result as `buffer`.
    let status = unsafe {
        proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut size)
    };
    // SAFETY: as `buffer`.
    let bytes = unsafe { owned(data, size) };
    match status {
        OK => Ok(Some(bytes)),
        1 => Ok(None),
        s => Err(HostError(s)),
    }
}

/// Sets (or with `None` removes) a header.
pub fn set_header(map: Map, name: &str, value: Option<&str>) -> Result<(), HostError> {
    // SAFETY: the host reads the name and value within their lengths.
    check(unsafe {
        match value {
            Some(v) => proxy_replace_header_map_value(
                map as u32,
                name.as_ptr(),
                name.len(),
                v.as_ptr(),
                v.len(),
            ),
            None => proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()),
        }
    })
}

/// A property (path segments), if the host has it.
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    let mut serialized = Vec::new();
    for segment in path {
        serialized.extend_from_slice(segment.as_bytes());
        serialized.push(0);
    }
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: the host reads the path within its length; the result as `buffer`.
    let status =
        unsafe { proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut size) };
    // SAFETY: as `buffer`.
    let bytes = unsafe { owned(data, size) };
    (status == OK && !data.is_null()).then_some(bytes)
}

/// A local reply on the effective context: Envoy adds content-length (and, for HEAD, omits
/// the body).
pub fn send_reply(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Result<(), HostError> {
    let map = header_map::encode(headers);
    // SAFETY: the host reads each buffer within its length.
    check(unsafe {
        proxy_send_local_response(
            status as u32,
            null(),
            0,
            body.as_ptr(),
            body.len(),
            map.as_ptr(),
            map.len(),
            -1,
        )
    })
}

/// The host's clock in Unix milliseconds (0 if the host can't tell).
pub fn now_ms() -> u64 {
    let mut ns = 0u64;
    // SAFETY: the host writes one u64.
    match unsafe { proxy_get_current_time_nanoseconds(&mut ns) } {
        OK => ns / 1_000_000,
        _ => 0,
    }
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
unsafe extern "C" {
    fn random_get(buf: *mut u8, len: usize) -> u16;
}

/// 64 random bits from the host (WASI `random_get`, which Envoy provides); the clock's
/// nanoseconds if it refuses. Not std's `RandomState`: its `expect` on the WASI call brings
/// WASI's errno names and SipHash into the .wasm (~3 KB).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: the host writes at most `b.len()` bytes into `b`.
    if unsafe { random_get(b.as_mut_ptr(), b.len()) } == 0 {
        return u64::from_le_bytes(b);
    }
    let mut ns = 0u64;
    // SAFETY: the host writes one u64.
    unsafe { proxy_get_current_time_nanoseconds(&mut ns) };
    ns
}

/// Makes host calls apply to another context (a stream served by the root).
pub fn set_effective_context(id: u32) -> Result<(), HostError> {
    // SAFETY: a plain value.
    check(unsafe { proxy_set_effective_context(id) })
}

/// Lets the held request of the effective context go on.
pub fn resume_request() -> Result<(), HostError> {
    // SAFETY: a plain value (StreamType::HttpRequest).
    check(unsafe { proxy_continue_stream(0) })
}

/// Lets the held response of the effective context go on.
pub fn resume_response() -> Result<(), HostError> {
    // SAFETY: a plain value (StreamType::HttpResponse).
    check(unsafe { proxy_continue_stream(1) })
}

/// The root context's timer: `on_tick` every `ms` from now.
pub fn set_tick_period(ms: u32) -> Result<(), HostError> {
    // SAFETY: a plain value.
    check(unsafe { proxy_set_tick_period_milliseconds(ms) })
}

/// Defines a counter (`gauge`: a gauge) and returns its id.
pub fn define_metric(name: &str, gauge: bool) -> Option<u32> {
    let mut id = 0;
    let kind = if gauge { 1 } else { 0 };
    // SAFETY: the host reads the name within its length and writes one u32.
    let status = unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) };
    (status == OK).then_some(id)
}

pub fn increment_metric(id: u32, by: i64) {
    // SAFETY: plain values.
    let _ = unsafe { proxy_increment_metric(id, by) };
}

/// The host's log level (0 trace .. 5 critical).
pub fn log_level() -> Option<u32> {
    let mut level = 0;
    // SAFETY: the host writes one u32.
    (unsafe { proxy_get_log_level(&mut level) } == OK).then_some(level)
}

/// A host function Envoy registers for Wasm (`compress`, `uncompress`: zlib), called with
/// `arguments`; `None` when it fails or does not exist. (One copy: each codec call is one
/// host call, never worth inlining.)
#[inline(never)]
pub fn foreign(name: &str, arguments: &[u8]) -> Option<Vec<u8>> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: the host reads the two slices and writes a pointer and a length (see `owned`).
    let status = unsafe {
        proxy_call_foreign_function(
            name.as_ptr(),
            name.len(),
            arguments.as_ptr(),
            arguments.len(),
            &mut data,
            &mut size,
        )
    };
    // SAFETY: whatever the status, a non-null pointer is a buffer the host gave us.
    let bytes = unsafe { owned(data, size) };
    (status == OK).then_some(bytes)
}

/// Envoy's zlib (its `compress` and `uncompress` foreign functions): native speed, and
/// nothing of a codec in the .wasm.
#[derive(Debug)]
pub struct HostZlib;

impl crate::packing::Codec for HostZlib {
    fn compress(&self, data: &[u8]) -> Option<Vec<u8>> {
        foreign("compress", data)
    }
    fn uncompress(&self, data: &[u8], expected: usize) -> Option<Vec<u8>> {
        // Envoy's `uncompress` starts with an output buffer of twice the input and inflates
        // again from the start into a twice larger one each time it is short: a block that
        // compressed to a fifth was inflated three times. zlib stops at the end of the stream
        // and ignores what follows, so zeros appended up to half the expected size make the
        // first buffer large enough: one pass.
        let half = expected / 2;
        if data.len() >= half {
            return foreign("uncompress", data);
        }
        let mut padded = Vec::with_capacity(half);
        padded.extend_from_slice(data);
        padded.resize(half, 0);
        foreign("uncompress", &padded)
    }
}
