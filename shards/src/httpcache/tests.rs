use std::borrow::Cow;

use super::*;

const GET: RequestFacts = RequestFacts { cacheable_method: true, has_authorization: false };

fn fields(cache_control: &'static str) -> ResponseFields<'static> {
    ResponseFields { status: 200, cache_control: Some(cache_control.as_bytes()), ..ResponseFields::default() }
}

/// Lifetime (ms) of a response, or why it is not stored.
fn check(request: RequestFacts, response: ResponseFields<'_>, default_ttl_ms: u64) -> Result<u64, NotStored> {
    storable(request, &response, 1_000_000, 1_000_000, default_ttl_ms).map(|f| f.lifetime_ms)
}

#[test]
fn storage_rules() {
    assert_eq!(check(GET, fields("max-age=60"), 0), Ok(60_000));
    assert_eq!(check(GET, fields("max-age=60, s-maxage=5"), 0), Ok(5_000), "s-maxage wins in a shared cache");
    assert_eq!(check(GET, fields("public, max-age=\"7\""), 0), Ok(7_000));
    assert_eq!(check(GET, fields("max-age=abc"), 0), Ok(0), "malformed max-age is stale");
    assert_eq!(check(GET, fields("no-store, max-age=60"), 0), Err(NotStored::NoStore));
    assert_eq!(check(GET, fields("private, max-age=60"), 0), Err(NotStored::Private));
    assert_eq!(check(GET, fields("Private=\"x, y\", max-age=60"), 0), Err(NotStored::Private));
    let post = RequestFacts { cacheable_method: false, ..GET };
    assert_eq!(check(post, fields("max-age=60"), 0), Err(NotStored::Method));
    let authorized = RequestFacts { has_authorization: true, ..GET };
    assert_eq!(check(authorized, fields("max-age=60"), 0), Err(NotStored::Authorization));
    assert_eq!(check(authorized, fields("public, max-age=60"), 0), Ok(60_000));
    assert_eq!(check(authorized, fields("s-maxage=60"), 0), Ok(60_000));
    assert_eq!(
        check(GET, ResponseFields { vary: Some(b"Accept, *"), ..fields("max-age=60") }, 0),
        Err(NotStored::VaryStar)
    );
    assert_eq!(check(GET, ResponseFields { status: 206, ..fields("max-age=60") }, 0), Err(NotStored::Status));
    assert_eq!(check(GET, ResponseFields::default_ok(), 0), Err(NotStored::NoFreshness));
    assert_eq!(check(GET, ResponseFields::default_ok(), 30_000), Ok(30_000), "--default-ttl");
    let error = ResponseFields { status: 500, ..ResponseFields::default_ok() };
    assert_eq!(check(GET, error, 30_000), Err(NotStored::NoFreshness), "500 is not heuristically cacheable");
    assert_eq!(check(GET, fields("no-cache"), 0), Err(NotStored::NoFreshness));
    assert_eq!(check(GET, fields("no-cache, max-age=60"), 0), Err(NotStored::NoStore), "no validator");
    let revalidatable = ResponseFields { has_validator: true, ..fields("no-cache, max-age=60") };
    assert_eq!(check(GET, revalidatable, 0), Ok(0), "no-cache: stored, always revalidated");
}

impl ResponseFields<'static> {
    fn default_ok() -> Self {
        ResponseFields { status: 200, ..ResponseFields::default() }
    }
}

#[test]
fn expires_is_relative_to_date_and_malformed_means_expired() {
    let response = ResponseFields {
        date: Some(b"Sun, 06 Nov 1994 08:49:37 GMT"),
        expires: Some(b"Sun, 06 Nov 1994 08:50:37 GMT"),
        ..ResponseFields::default_ok()
    };
    assert_eq!(check(GET, response, 0), Ok(60_000));
    let malformed = ResponseFields { expires: Some(b"0"), ..ResponseFields::default_ok() };
    assert_eq!(check(GET, malformed, 0), Ok(0));
    let with_max_age = ResponseFields { cache_control: Some(b"max-age=5"), ..response };
    assert_eq!(check(GET, with_max_age, 0), Ok(5_000), "max-age overrides Expires");
}

#[test]
fn age_freshness_and_stale_windows() {
    let response =
        ResponseFields { age: Some(b"3"), ..fields("max-age=10, stale-while-revalidate=5, stale-if-error=20") };
    let freshness = storable(GET, &response, 1_000, 1_200, 0).unwrap();
    assert_eq!(freshness.initial_age_ms, 3_200, "Age plus the response delay");
    assert_eq!(freshness.age_ms(2_200), 4_200);
    assert_eq!(freshness.state(7_999), State::Fresh);
    let stale = |swr, sie| State::Stale { revalidate_in_background: swr, on_error: sie };
    assert_eq!(freshness.state(8_000), stale(true, true));
    assert_eq!(freshness.state(12_999), stale(true, true));
    assert_eq!(freshness.state(13_000), stale(false, true));
    assert_eq!(freshness.state(28_000), stale(false, false));
    let strict = storable(GET, &fields("max-age=1, must-revalidate, stale-if-error=60"), 0, 0, 0).unwrap();
    assert_eq!(strict.state(1_000), stale(false, false), "must-revalidate forbids stale");
}

#[test]
fn cache_control_parsing() {
    let control =
        CacheControl::parse(b" MAX-AGE=10 ,, no-cache=\"Set-Cookie, X\", stale-if-error=99999999999999999999999");
    assert_eq!(control.max_age_s, Some(10));
    assert!(control.no_cache);
    assert_eq!(control.stale_if_error_s, Some(u64::MAX));
    assert_eq!(CacheControl::parse(b""), CacheControl::default());
    assert_eq!(
        vary_names(b"Accept-Encoding, accept-encoding ,X-Tenant"),
        Ok(vec![Bytes::from_static(b"accept-encoding"), Bytes::from_static(b"x-tenant")])
    );
    assert_eq!(vary_names(b"*"), Err(NotStored::VaryStar));
}

fn variant(vary_values: Vec<Option<Bytes>>, body: &'static str, lifetime_ms: u64) -> Variant {
    Variant {
        vary_values,
        status: 200,
        reason: Bytes::from_static(b"OK"),
        headers: Bytes::from_static(b"Content-Type: text/plain\r\n"),
        body: Bytes::from_static(body.as_bytes()),
        etag: Some(Bytes::from_static(b"\"t\"")),
        last_modified: None,
        freshness: Freshness { lifetime_ms, ..Freshness::default() },
    }
}

fn no_fields(_: &[u8]) -> Option<Cow<'static, [u8]>> {
    None
}

#[test]
fn lookup_store_refresh_remove() {
    let mut cache = HttpCache::new(1 << 20);
    let key = Bytes::from_static(b"h/a");
    assert_eq!(cache.lookup(0, 1, &key, no_fields), Lookup::Miss);
    assert!(cache.store(1, key.clone(), Vec::new(), variant(Vec::new(), "one", 1_000)));
    let Lookup::Hit { variant: hit, state } = cache.lookup(500, 1, &key, no_fields) else { panic!("hit expected") };
    assert_eq!((hit.body.as_ref(), state), (&b"one"[..], State::Fresh));
    assert!(matches!(cache.lookup(1_000, 1, &key, no_fields), Lookup::Hit { state: State::Stale { .. }, .. }));
    assert_eq!(cache.lookup(0, 1, b"h/other", no_fields), Lookup::Miss, "a hash collision is a miss");
    let refreshed =
        cache.refresh(1, &key, &[], Freshness { response_ms: 1_000, lifetime_ms: 1_000, ..Freshness::default() }, None);
    assert_eq!(refreshed.map(|v| v.body.clone()), Some(Bytes::from_static(b"one")));
    assert!(matches!(cache.lookup(1_500, 1, &key, no_fields), Lookup::Hit { state: State::Fresh, .. }));
    assert!(cache.remove(1));
    assert!(!cache.remove(1));
    assert_eq!(cache.lookup(0, 1, &key, no_fields), Lookup::Miss);
    assert_eq!(cache.bytes(), 0);
}

#[test]
fn vary_selects_variants_and_a_new_vary_replaces_them() {
    let mut cache = HttpCache::new(1 << 20);
    let key = Bytes::from_static(b"h/v");
    let vary = vec![Bytes::from_static(b"accept")];
    let json = |name: &[u8]| (name == b"accept").then_some(Cow::Borrowed(&b" application/json "[..]));
    let text = |name: &[u8]| (name == b"accept").then_some(Cow::Borrowed(&b"text/plain"[..]));
    cache.store(2, key.clone(), vary.clone(), variant(HttpCache::vary_values(&vary, json), "json", 1_000));
    assert_eq!(cache.lookup(0, 2, &key, text), Lookup::Miss);
    cache.store(2, key.clone(), vary.clone(), variant(HttpCache::vary_values(&vary, text), "text", 1_000));
    let body = |lookup: Lookup| match lookup {
        Lookup::Hit { variant, .. } => variant.body.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(body(cache.lookup(0, 2, &key, json)), "json");
    assert_eq!(body(cache.lookup(0, 2, &key, text)), "text");
    assert_eq!(cache.lookup(0, 2, &key, no_fields), Lookup::Miss, "an absent field is its own variant");
    cache.store(2, key.clone(), Vec::new(), variant(Vec::new(), "plain", 1_000));
    assert_eq!(body(cache.lookup(0, 2, &key, text)), "plain");
    assert_eq!(cache.objects(), 1);
}

#[test]
fn hit_for_miss_expires_and_a_store_clears_it() {
    let mut cache = HttpCache::new(1 << 20);
    cache.mark_hit_for_miss(0, 3);
    assert_eq!(cache.lookup(HIT_FOR_MISS_MS - 1, 3, b"k", no_fields), Lookup::HitForMiss);
    assert_eq!(cache.lookup(HIT_FOR_MISS_MS, 3, b"k", no_fields), Lookup::Miss);
    cache.mark_hit_for_miss(0, 3);
    cache.store(3, Bytes::from_static(b"k"), Vec::new(), variant(Vec::new(), "x", 1_000));
    assert!(matches!(cache.lookup(1, 3, b"k", no_fields), Lookup::Hit { .. }));
}

#[test]
fn the_budget_is_kept_by_evicting_whole_objects() {
    let budget = 64 * 1024;
    let mut cache = HttpCache::new(budget);
    let body: &'static str = Box::leak("b".repeat(1000).into_boxed_str());
    for i in 0..1_000u64 {
        cache.store(i, Bytes::from(format!("k{i}")), Vec::new(), variant(Vec::new(), body, 1_000));
        assert!(cache.bytes() <= budget, "over budget after {i}");
    }
    assert!(cache.evictions() > 900 && cache.objects() < 100);
    let mut huge = variant(Vec::new(), body, 1_000);
    huge.body = Bytes::from(vec![0u8; budget as usize * 2]);
    assert!(!cache.store(5_000, Bytes::from_static(b"huge"), Vec::new(), huge), "larger than the whole budget");
}

#[test]
fn an_enormous_age_saturates_instead_of_overflowing() {
    for age in [&b"18446744073709551615"[..], b"99999999999999999999999999", b"18446744073709551"] {
        let response = ResponseFields { age: Some(age), ..fields("max-age=10") };
        let freshness = storable(GET, &response, 1_000, 2_000, 0).expect("stored");
        assert_eq!(freshness.age_ms(u64::MAX), u64::MAX, "{}", String::from_utf8_lossy(age));
        assert!(matches!(freshness.state(u64::MAX), State::Stale { .. }));
    }
}

#[test]
fn a_response_that_sets_a_cookie_is_never_stored() {
    for cache_control in ["max-age=60", "public, max-age=60", "s-maxage=60"] {
        let response = ResponseFields { sets_cookie: true, ..fields(cache_control) };
        assert_eq!(check(GET, response, 60_000), Err(NotStored::SetCookie), "{cache_control}");
    }
}
