//! Fuzzes the gateway's reading of response fields
//! (`shardgate_shards::httpcache`): `Cache-Control` (also as the RFC 9213
//! targeted fields), `Vary`, `Age`, `Expires`, `Date` and `Last-Modified`
//! straight from an origin.
//!
//! Input: one byte per field length (five fields), then the fields' bytes.
//! Checked: no panic, and what is stored is consistent: its age and
//! freshness are computed without overflow at any time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate_shards::httpcache::{
    parse_age, storable, vary_names, CacheControl, Heuristics, RequestFacts, ResponseFields,
};

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let (lengths, mut rest) = data.split_at(5);
    let mut fields = [&b""[..]; 5];
    for (field, &length) in fields.iter_mut().zip(lengths) {
        let take = usize::from(length).min(rest.len());
        *field = &rest[..take];
        rest = &rest[take..];
    }
    let [cache_control, vary, age, expires, date] = fields;
    let _ = CacheControl::parse(cache_control);
    let _ = CacheControl::parse_targeted(cache_control);
    let _ = vary_names(vary);
    let _ = parse_age(age);
    let targeted = lengths[3] & 1 == 1;
    let response = ResponseFields {
        status: 200,
        cache_control: Some(cache_control),
        cdn_cache_control: targeted.then_some(cache_control),
        shardgate_cache_control: None,
        expires: Some(expires),
        date: Some(date),
        age: Some(age),
        vary: Some(vary),
        last_modified: Some(expires),
        has_validator: lengths[0] & 1 == 1,
        sets_cookie: lengths[4] & 1 == 1,
    };
    let request = RequestFacts { cacheable_method: true, has_authorization: lengths[1] & 1 == 1 };
    let now = u64::from(lengths[2]) << 40;
    let heuristics = Heuristics { default_ttl_ms: 60_000, last_modified_percent: u32::from(lengths[3] % 101) };
    if let Ok(stored) = storable(request, &response, now, now.saturating_add(5), heuristics) {
        let freshness = stored.freshness;
        for at in [0, now, u64::MAX] {
            let _ = freshness.age_ms(at);
            let _ = freshness.state(at);
        }
    }
});
