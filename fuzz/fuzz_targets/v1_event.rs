//! fluxd's `POST /v6/events` body: any bytes decode or are refused without a panic,
//! and an accepted event maps.
#![no_main]

use flux_status::fluxv1::event::parse;
use flux_status::fluxv1::map::{V1Context, map, sync_check};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = parse(data) {
        let ctx = V1Context {
            repo: "github.com/o/r".into(),
            check: sync_check("fuzz"),
            status_range: 3,
            target_url: None,
        };
        let _ = map(&event, &ctx);
    }
});
