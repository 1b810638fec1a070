use std::borrow::Cow;

use super::*;
use crate::pieces::Pieces;

const GET: RequestFacts = RequestFacts { cacheable_method: true, has_authorization: false };

fn fields(cache_control: &'static str) -> ResponseFields<'static> {
    ResponseFields { status: 200, cache_control: Some(cache_control.as_bytes()), ..ResponseFields::default() }
}

/// Lifetime (ms) of a response, or why it is not stored.
fn check(request: RequestFacts, response: ResponseFields<'_>, default_ttl_ms: u64) -> Result<u64, NotStored> {
    let heuristics = Heuristics { default_ttl_ms, last_modified_percent: 0 };
    storable(request, &response, 1_000_000, 1_000_000, heuristics).map(|s| s.freshness.lifetime_ms)
}

fn freshness(response: &ResponseFields<'_>, request_ms: u64, response_ms: u64) -> Freshness {
    storable(GET, response, request_ms, response_ms, Heuristics::default()).expect("stored").freshness
}

#[test]
fn storage_rules() {
    assert_eq!(check(GET, fields("max-age=60"), 0), Ok(60_000));
    assert_eq!(check(GET, fields("max-age=60, s-maxage=5"), 0), Ok(5_000), "s-maxage wins in a shared cache");
    assert_eq!(check(GET, fields("public, max-age=\"7\""), 0), Ok(7_000));
    assert_eq!(check(GET, fields("max-age=abc"), 0), Ok(0), "malformed max-age is stale");
    assert_eq!(check(GET, fields("no-store, max-age=60"), 0), Err(NotStored::NoStore));
    assert_eq!(check(GET, fields("private, max-age=60"), 0), Err(NotStored::Private));
    assert_eq!(check(GET, fields("Private=\"x, y\", max-age=60"), 0), Ok(60_000), "qualified private: stored");
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
    let freshness = freshness(&response, 1_000, 1_200);
    assert_eq!(freshness.initial_age_ms, 3_200, "Age plus the response delay");
    assert_eq!(freshness.age_ms(2_200), 4_200);
    assert_eq!(freshness.state(7_999), State::Fresh);
    let stale = |swr, sie| State::Stale { revalidate_in_background: swr, on_error: sie };
    assert_eq!(freshness.state(8_000), stale(true, true));
    assert_eq!(freshness.state(12_999), stale(true, true));
    assert_eq!(freshness.state(13_000), stale(false, true));
    assert_eq!(freshness.state(28_000), stale(false, false));
    let strict = self::freshness(&fields("max-age=1, must-revalidate, stale-if-error=60"), 0, 0);
    assert_eq!(strict.state(1_000), stale(false, false), "must-revalidate forbids stale");
}

#[test]
fn cache_control_parsing() {
    let control =
        CacheControl::parse(b" MAX-AGE=10 ,, no-cache=\"Set-Cookie, X\", stale-if-error=99999999999999999999999");
    assert_eq!(control.max_age_s, Some(10));
    assert!(!control.no_cache, "qualified no-cache is not the unqualified one");
    assert_eq!(control.no_cache_fields, [Bytes::from_static(b"set-cookie"), Bytes::from_static(b"x")]);
    assert_eq!(control.stale_if_error_s, Some(u64::MAX));
    assert_eq!(CacheControl::parse(b""), CacheControl::default());
    assert!(CacheControl::parse(b"no-cache").no_cache);
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
        body: Pieces::one(Bytes::from_static(body.as_bytes())),
        etag: Some(Bytes::from_static(b"\"t\"")),
        last_modified: None,
        date: *b"Sat, 28 Nov 2026 07:00:00 GMT",
        freshness: Freshness { lifetime_ms, ..Freshness::default() },
    }
}

fn no_fields(_: &[u8]) -> Option<Cow<'static, [u8]>> {
    None
}

#[test]
fn lookup_store_refresh_remove() {
    let mut cache = HttpCache::new(1 << 20, 1 << 20);
    let key = Bytes::from_static(b"h/a");
    assert_eq!(cache.lookup(0, 1, &key, no_fields), Lookup::Miss);
    assert!(cache.store(1, key.clone(), Vec::new(), variant(Vec::new(), "one", 1_000), Vec::new()));
    let Lookup::Hit { variant: hit, state } = cache.lookup(500, 1, &key, no_fields) else { panic!("hit expected") };
    assert_eq!((hit.body.to_bytes(), state), (Bytes::from_static(b"one"), State::Fresh));
    assert!(matches!(cache.lookup(1_000, 1, &key, no_fields), Lookup::Hit { state: State::Stale { .. }, .. }));
    assert_eq!(cache.lookup(0, 1, b"h/other", no_fields), Lookup::Miss, "a hash collision is a miss");
    let fresh = Freshness { response_ms: 1_000, lifetime_ms: 1_000, ..Freshness::default() };
    let refreshed = cache.refresh(1, &key, &[], fresh, None, None);
    assert_eq!(refreshed.map(|v| v.body.to_bytes()), Some(Bytes::from_static(b"one")));
    assert!(matches!(cache.lookup(1_500, 1, &key, no_fields), Lookup::Hit { state: State::Fresh, .. }));
    assert!(cache.remove(1));
    assert!(!cache.remove(1));
    assert_eq!(cache.lookup(0, 1, &key, no_fields), Lookup::Miss);
    assert_eq!(cache.bytes(), 0);
}

#[test]
fn vary_selects_variants_and_a_new_vary_replaces_them() {
    let mut cache = HttpCache::new(1 << 20, 1 << 20);
    let key = Bytes::from_static(b"h/v");
    let vary = vec![Bytes::from_static(b"accept")];
    let json = |name: &[u8]| (name == b"accept").then_some(Cow::Borrowed(&b" application/json "[..]));
    let text = |name: &[u8]| (name == b"accept").then_some(Cow::Borrowed(&b"text/plain"[..]));
    cache.store(
        2,
        key.clone(),
        vary.clone(),
        variant(HttpCache::vary_values(&vary, json, None), "json", 1_000),
        vec![],
    );
    assert_eq!(cache.lookup(0, 2, &key, text), Lookup::VaryMiss);
    cache.store(
        2,
        key.clone(),
        vary.clone(),
        variant(HttpCache::vary_values(&vary, text, None), "text", 1_000),
        vec![],
    );
    let body = |lookup: Lookup| match lookup {
        Lookup::Hit { variant, .. } => variant.body.to_bytes(),
        other => panic!("{other:?}"),
    };
    assert_eq!(body(cache.lookup(0, 2, &key, json)), "json");
    assert_eq!(body(cache.lookup(0, 2, &key, text)), "text");
    assert_eq!(cache.lookup(0, 2, &key, no_fields), Lookup::VaryMiss, "an absent field is its own variant");
    cache.store(2, key.clone(), Vec::new(), variant(Vec::new(), "plain", 1_000), vec![]);
    assert_eq!(body(cache.lookup(0, 2, &key, text)), "plain");
    assert_eq!(cache.objects(), 1);
}

#[test]
fn hit_for_miss_expires_and_a_store_clears_it() {
    let mut cache = HttpCache::new(1 << 20, 1 << 20);
    cache.mark_hit_for_miss(0, 3);
    assert_eq!(cache.lookup(HIT_FOR_MISS_MS - 1, 3, b"k", no_fields), Lookup::HitForMiss);
    assert_eq!(cache.lookup(HIT_FOR_MISS_MS, 3, b"k", no_fields), Lookup::Miss);
    cache.mark_hit_for_miss(0, 3);
    cache.store(3, Bytes::from_static(b"k"), Vec::new(), variant(Vec::new(), "x", 1_000), vec![]);
    assert!(matches!(cache.lookup(1, 3, b"k", no_fields), Lookup::Hit { .. }));
}

#[test]
fn the_budget_is_kept_by_evicting_whole_objects() {
    let budget = 64 * 1024;
    let mut cache = HttpCache::new(budget, 1 << 20);
    let body: &'static str = Box::leak("b".repeat(1000).into_boxed_str());
    for i in 0..1_000u64 {
        cache.store(i, Bytes::from(format!("k{i}")), Vec::new(), variant(Vec::new(), body, 1_000), vec![]);
        assert!(cache.bytes() <= budget, "over budget after {i}");
    }
    assert!(cache.evictions() > 900 && cache.objects() < 100);
    let mut huge = variant(Vec::new(), body, 1_000);
    huge.body = Pieces::one(Bytes::from(vec![0u8; budget as usize * 2]));
    assert!(!cache.store(5_000, Bytes::from_static(b"huge"), Vec::new(), huge, vec![]), "larger than the whole budget");
}

#[test]
fn an_enormous_age_saturates_instead_of_overflowing() {
    for age in [&b"18446744073709551615"[..], b"99999999999999999999999999", b"18446744073709551"] {
        let response = ResponseFields { age: Some(age), ..fields("max-age=10") };
        let freshness = freshness(&response, 1_000, 2_000);
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

/// One row of the conformance table: a response's fields, and what RFC
/// 9111 (or RFC 9213) says a shared cache does with it.
struct Rule {
    section: &'static str,
    response: ResponseFields<'static>,
    heuristics: Heuristics,
    /// The lifetime in ms, or why it is not stored.
    expect: Result<u64, NotStored>,
}

fn rule(section: &'static str, response: ResponseFields<'static>, expect: Result<u64, NotStored>) -> Rule {
    Rule { section, response, heuristics: Heuristics::default(), expect }
}

const DATE: &[u8] = b"Sat, 28 Nov 2026 07:00:00 GMT";
const TEN_DAYS_BEFORE: &[u8] = b"Wed, 18 Nov 2026 07:00:00 GMT";

#[test]
fn storage_and_freshness_conform_to_rfc_9111_and_9213() {
    let ok = ResponseFields::default_ok();
    let lm = |percent| Heuristics { default_ttl_ms: 0, last_modified_percent: percent };
    let rules = [
        rule(
            "9111 §5.2.2.3 must-understand with an understood status ignores no-store",
            fields("must-understand, no-store, max-age=60"),
            Ok(60_000),
        ),
        rule(
            "9111 §5.2.2.3 must-understand with a status not understood: not stored",
            ResponseFields { status: 299, ..fields("must-understand, no-store, max-age=60") },
            Err(NotStored::MustUnderstand),
        ),
        rule("9111 §5.2.2.5 no-store without must-understand", fields("no-store, max-age=60"), Err(NotStored::NoStore)),
        rule(
            "9111 §5.2.2.7 unqualified private: a shared cache does not store",
            fields("private, max-age=60"),
            Err(NotStored::Private),
        ),
        rule(
            "9111 §5.2.2.7 private=\"X-User\": stored without the field",
            fields("private=\"X-User\", max-age=60"),
            Ok(60_000),
        ),
        rule(
            "9111 §5.2.2.4 no-cache=\"Set-Cookie\": the cookie is left out, the response stored",
            ResponseFields { sets_cookie: true, ..fields("no-cache=\"Set-Cookie\", max-age=60") },
            Ok(60_000),
        ),
        rule(
            "9213 §2.2 CDN-Cache-Control beats Cache-Control",
            ResponseFields { cdn_cache_control: Some(b"max-age=300"), ..fields("max-age=5") },
            Ok(300_000),
        ),
        rule(
            "9213 §2.2 a targeted no-store beats a permissive Cache-Control",
            ResponseFields { cdn_cache_control: Some(b"no-store"), ..fields("public, max-age=5") },
            Err(NotStored::NoStore),
        ),
        rule(
            "9213 §2.2 a targeted field lets the cache store what Cache-Control forbids",
            ResponseFields { cdn_cache_control: Some(b"max-age=30"), ..fields("no-store") },
            Ok(30_000),
        ),
        rule(
            "9213 §2.1 Shardgate-Cache-Control (the own-name form) beats CDN-Cache-Control",
            ResponseFields {
                shardgate_cache_control: Some(b"max-age=7"),
                cdn_cache_control: Some(b"max-age=300"),
                ..fields("max-age=5")
            },
            Ok(7_000),
        ),
        rule(
            "9213 §2.1 an invalid targeted field is ignored: the next one decides",
            ResponseFields {
                shardgate_cache_control: Some(b"Max-Age=9"),
                cdn_cache_control: Some(b"max-age=300"),
                ..ok
            },
            Ok(300_000),
        ),
        rule(
            "9213 §2.2 with a targeted field, Expires is ignored too",
            ResponseFields {
                cdn_cache_control: Some(b"stale-if-error=60"),
                date: Some(DATE),
                expires: Some(b"Sat, 28 Nov 2026 08:00:00 GMT"),
                ..ok
            },
            Err(NotStored::NoFreshness),
        ),
        Rule {
            section: "9111 §4.2.2 heuristic freshness: 10% of the time since Last-Modified",
            response: ResponseFields { date: Some(DATE), last_modified: Some(TEN_DAYS_BEFORE), ..ok },
            heuristics: lm(10),
            expect: Ok(86_400_000),
        },
        Rule {
            section: "9111 §4.2.2 heuristics only for heuristically cacheable statuses",
            response: ResponseFields { status: 302, date: Some(DATE), last_modified: Some(TEN_DAYS_BEFORE), ..ok },
            heuristics: lm(10),
            expect: Err(NotStored::NoFreshness),
        },
        Rule {
            section: "9111 §4.2.2 or responses marked public",
            response: ResponseFields {
                status: 302,
                date: Some(DATE),
                last_modified: Some(TEN_DAYS_BEFORE),
                ..fields("public")
            },
            heuristics: lm(10),
            expect: Ok(86_400_000),
        },
        Rule {
            section: "9111 §4.2.2 heuristics are opt-in",
            response: ResponseFields { date: Some(DATE), last_modified: Some(TEN_DAYS_BEFORE), ..ok },
            heuristics: Heuristics::default(),
            expect: Err(NotStored::NoFreshness),
        },
    ];
    for rule in rules {
        let got = storable(GET, &rule.response, 1_000_000, 1_000_000, rule.heuristics).map(|s| s.freshness.lifetime_ms);
        assert_eq!(got, rule.expect, "{}", rule.section);
    }
}

#[test]
fn qualified_no_cache_and_private_name_the_fields_to_strip() {
    let response = fields("private=\"X-User, x-tenant\", no-cache=\"Set-Cookie\", max-age=60");
    let stored = storable(GET, &ResponseFields { sets_cookie: true, ..response }, 0, 0, Heuristics::default()).unwrap();
    let names: Vec<&[u8]> = stored.strip.iter().map(|n| &n[..]).collect();
    assert_eq!(names, [&b"set-cookie"[..], b"x-tenant", b"x-user"], "RFC 9111 §5.2.2.4 and §5.2.2.7, lower-cased");
}

#[test]
fn age_is_the_first_member_and_invalid_is_ignored_rfc_9111_5_1() {
    let cases: [(&[u8], Option<u64>); 7] = [
        (b"10", Some(10)),
        (b" 10 ", Some(10)),
        (b"10, 20", Some(10)),
        (b"-5", None),
        (b"1.5", None),
        (b"ten", None),
        (b"", None),
    ];
    for (value, expect) in cases {
        assert_eq!(parse_age(value), expect, "{}", String::from_utf8_lossy(value));
    }
    let invalid = ResponseFields { age: Some(b"-5"), ..fields("max-age=60") };
    assert_eq!(freshness(&invalid, 1_000, 1_000).initial_age_ms, 0, "an invalid Age is ignored, not an error");
}

#[test]
fn accept_encoding_variants_are_chosen_by_coding_not_by_text() {
    let mut cache = HttpCache::new(1 << 20, 1 << 20);
    let key = Bytes::from_static(b"h/ae");
    let vary = vec![Bytes::from_static(b"accept-encoding")];
    let asks = |value: &'static [u8]| move |name: &[u8]| (name == b"accept-encoding").then_some(Cow::Borrowed(value));
    let stored = |coding| variant(HttpCache::vary_values(&vary, no_fields, coding), "x", 1_000);
    cache.store(4, key.clone(), vary.clone(), stored(Some(b"gzip")), vec![]);
    let coding_of = |lookup: Lookup| match lookup {
        Lookup::Hit { variant, .. } => String::from_utf8(variant.vary_values[0].clone().unwrap().to_vec()).unwrap(),
        other => format!("{other:?}"),
    };
    // Different texts, one variant: no split on trivial differences.
    assert_eq!(coding_of(cache.lookup(0, 4, &key, asks(b"gzip, deflate, br"))), "gzip");
    assert_eq!(coding_of(cache.lookup(0, 4, &key, asks(b"br;q=1.0, gzip;q=0.8"))), "gzip");
    assert_eq!(coding_of(cache.lookup(0, 4, &key, asks(b"identity"))), "VaryMiss", "gzip not accepted");
    assert_eq!(coding_of(cache.lookup(0, 4, &key, no_fields)), "VaryMiss", "no field: identity only");
    cache.store(4, key.clone(), vary.clone(), stored(None), vec![]);
    cache.store(4, key.clone(), vary.clone(), stored(Some(b"br")), vec![]);
    assert_eq!(coding_of(cache.lookup(0, 4, &key, no_fields)), "identity");
    assert_eq!(coding_of(cache.lookup(0, 4, &key, asks(b"gzip;q=0.5, br"))), "br", "the highest weight wins");
    assert_eq!(coding_of(cache.lookup(0, 4, &key, asks(b"gzip, br;q=0.1"))), "gzip");
}

#[test]
fn purge_by_tag_drops_or_expires_exactly_the_tagged_objects() {
    let mut cache = HttpCache::new(1 << 20, 1 << 20);
    let tag = |t: &'static str| Bytes::from_static(t.as_bytes());
    let mut soft_variant = variant(Vec::new(), "a", 10_000);
    soft_variant.freshness.stale_if_error_ms = 60_000;
    cache.store(1, Bytes::from_static(b"a"), vec![], soft_variant, vec![tag("t1"), tag("shared")]);
    cache.store(2, Bytes::from_static(b"b"), vec![], variant(Vec::new(), "b", 10_000), vec![tag("t2"), tag("shared")]);
    cache.store(3, Bytes::from_static(b"c"), vec![], variant(Vec::new(), "c", 10_000), vec![tag("t10")]);
    assert_eq!(cache.purge_tags(&[tag("t1")], true, 500), 1, "soft purge of t1 only");
    let stale = cache.lookup(500, 1, b"a", no_fields);
    assert!(matches!(stale, Lookup::Hit { state: State::Stale { on_error: true, .. }, .. }), "{stale:?}");
    assert!(matches!(cache.lookup(500, 3, b"c", no_fields), Lookup::Hit { state: State::Fresh, .. }), "t10 untouched");
    assert_eq!(cache.purge_tags(&[tag("shared")], false, 600), 2);
    assert_eq!(cache.lookup(600, 1, b"a", no_fields), Lookup::Miss);
    assert_eq!(cache.lookup(600, 2, b"b", no_fields), Lookup::Miss);
    assert_eq!(cache.purge_tags(&[tag("shared")], false, 700), 0, "the index forgot them");
    cache.remove(3);
    assert_eq!(cache.tag_bytes(), 0, "removals unindex");
    let mut full = HttpCache::new(1 << 20, 100);
    let many: Vec<Bytes> = (0..8).map(|i| Bytes::from(format!("tag-{i}"))).collect();
    assert!(!full.store(9, Bytes::from_static(b"k"), vec![], variant(Vec::new(), "k", 1_000), many));
    assert_eq!(full.objects(), 0, "tags that do not fit the index: not stored");
}
