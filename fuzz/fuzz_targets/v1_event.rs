//! fluxd's `POST /v6/events` body: both decoders give the same answer for any bytes
//! (they once did not, on bytes that are not UTF-8), and an accepted event maps.
#![no_main]

use flux_status::fluxv1::event::{parse, parse_in_two_passes};
use flux_status::fluxv1::map::{V1Context, map, sync_check};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let event = parse(data);
    assert_eq!(
        event,
        parse_in_two_passes(data),
        "the one-pass decode must give the two-pass answer"
    );
    if let Ok(event) = event {
        let ctx = V1Context {
            repo: "github.com/o/r".into(),
            check: sync_check("fuzz"),
            status_range: 3,
            target_url: None,
        };
        let _ = map(&event, &ctx);
    }
});
