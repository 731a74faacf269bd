//! The outbox log as found on disk after a crash or damage: replayed (the records it
//! can read, skipping the rest) without a panic or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = flux_status::delivery::store::replay_bytes(data);
});
