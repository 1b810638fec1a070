//! The gateway's cache rules against a scripted origin (docs/spec.md §7):
//! each test names the section of the RFC it checks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::harness::{eventually, Response, Server};
use crate::origin::{Origin, Reply};

const LAST_MODIFIED: &str = "Wed, 18 Nov 2026 07:00:00 GMT";
const DATE: &str = "Sat, 28 Nov 2026 07:00:00 GMT";

/// An HTTP-date `offset_s` seconds from now (a `Date` in the past would
/// make a response stale on arrival).
fn http_date(offset_s: i64) -> String {
    let now = std::time::SystemTime::now();
    let at = if offset_s >= 0 {
        now + std::time::Duration::from_secs(offset_s as u64)
    } else {
        now - std::time::Duration::from_secs(offset_s.unsigned_abs())
    };
    httpdate::fmt_http_date(at)
}

fn gateway(origin: &Origin, extra: &[&str]) -> Server {
    let url = origin.url();
    let mut args = vec!["--origin", url.as_str(), "--shards", "2", "--admin-token", "s3cret"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn request(server: &Server, method: &str, path: &str, fields: &[(&str, &str)]) -> Response {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: api.test\r\n");
    for (name, value) in fields {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str(if matches!(method, "POST" | "PUT") { "Content-Length: 0\r\n\r\n" } else { "\r\n" });
    if method == "HEAD" {
        let mut client = server.client();
        client.write(text.as_bytes());
        return client.head_response();
    }
    server.send(&text)
}

fn get(server: &Server, path: &str, fields: &[(&str, &str)]) -> Response {
    request(server, "GET", path, fields)
}

fn x_cache(response: &Response) -> &str {
    response.header("x-cache").unwrap_or("none")
}

fn cache_status(response: &Response) -> &str {
    response.header("cache-status").unwrap_or("none")
}

/// An origin answering `0123456789` with a strong tag, a last-modified
/// date and `max-age=60`.
fn digits() -> Origin {
    Origin::start(|_| {
        Reply::ok("max-age=60", "0123456789")
            .with("ETag", "\"v1\"")
            .with("Last-Modified", LAST_MODIFIED)
            .with("Date", &http_date(0))
    })
}

#[test]
fn rfc9110_14_byte_ranges_are_answered_from_the_cache() {
    let origin = digits();
    let server = gateway(&origin, &[]);
    // A miss with a range: the whole object is fetched (no Range forwarded),
    // stored, and the range answered from it.
    let first = get(&server, "/r", &[("Range", "bytes=2-4")]);
    assert_eq!((first.status, first.text().as_str(), x_cache(&first)), (206, "234", "MISS"));
    assert_eq!(first.header("content-range"), Some("bytes 2-4/10"));
    assert!(origin.seen()[0].header("range").is_none(), "the fill asks for the whole object");
    /// (request fields, status, body, Content-Range)
    type Case = (&'static [(&'static str, &'static str)], u16, &'static str, Option<&'static str>);
    let cases: [Case; 10] = [
        (&[("Range", "bytes=5-")], 206, "56789", Some("bytes 5-9/10")),
        (&[("Range", "bytes=-3")], 206, "789", Some("bytes 7-9/10")),
        (&[("Range", "bytes=0-100")], 206, "0123456789", Some("bytes 0-9/10")),
        (&[("Range", "bytes=0-1,5-6")], 200, "0123456789", None),
        (&[("Range", "bytes=5-2")], 200, "0123456789", None),
        (&[("Range", "bytes=0-0"), ("If-Range", "\"v1\"")], 206, "0", Some("bytes 0-0/10")),
        (&[("Range", "bytes=0-0"), ("If-Range", "\"v2\"")], 200, "0123456789", None),
        (&[("Range", "bytes=0-0"), ("If-Range", "W/\"v1\"")], 200, "0123456789", None),
        (&[("Range", "bytes=1-1"), ("If-Range", LAST_MODIFIED)], 206, "1", Some("bytes 1-1/10")),
        (&[("Range", "bytes=1-1"), ("If-Range", DATE)], 200, "0123456789", None),
    ];
    for (fields, status, body, range) in cases {
        let response = get(&server, "/r", fields);
        assert_eq!((response.status, response.text().as_str()), (status, body), "{fields:?}");
        assert_eq!(response.header("content-range"), range, "{fields:?}");
        assert_eq!(x_cache(&response), "HIT");
    }
    let unsatisfiable = get(&server, "/r", &[("Range", "bytes=10-")]);
    unsatisfiable.assert_problem(416);
    assert_eq!(unsatisfiable.header("content-range"), Some("bytes */10"));
    assert_eq!(origin.count("/r"), 1);
}

#[test]
fn rfc9110_14_a_partial_answer_is_never_stored() {
    let origin = Origin::start(|_| {
        let mut reply = Reply::ok("max-age=60", "23");
        reply.status = 206;
        reply.with("Content-Range", "bytes 2-3/10")
    });
    let server = gateway(&origin, &[]);
    for _ in 0..2 {
        let response = get(&server, "/p", &[]);
        assert_eq!((response.status, response.text().as_str()), (206, "23"));
        assert_ne!(x_cache(&response), "HIT");
    }
    assert_eq!(origin.count("/p"), 2, "a 206 is not served as a whole response");
}

#[test]
fn rfc9111_5_1_age_is_its_first_member_and_an_invalid_one_is_ignored() {
    let origin = Origin::start(|seen| {
        let age = if seen.path == "/list" { "100, 5" } else { "-5" };
        Reply::ok("max-age=600", "x").with("Age", age)
    });
    let server = gateway(&origin, &[]);
    let age = |path| get(&server, path, &[]).header("age").unwrap().parse::<u64>().unwrap();
    assert!(age("/list") >= 100, "the first member counts");
    assert!(age("/invalid") < 5, "an invalid Age is ignored");
}

#[test]
fn rfc9111_3_2_and_4_3_4_a_304_replaces_the_stored_fields_and_date() {
    let (first_date, later_date) = (http_date(0), http_date(1));
    let later = later_date.clone();
    let revalidated = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&revalidated);
    let origin = Origin::start(move |request| match request.header("if-none-match") {
        Some("\"v1\"") => {
            seen.fetch_add(1, Ordering::AcqRel);
            Reply::status(304)
                .with("ETag", "\"v1\"")
                .with("Cache-Control", "max-age=60")
                .with("X-Version", "2")
                .with("Date", &later)
        }
        _ => Reply::ok("max-age=60", "body").with("ETag", "\"v1\"").with("X-Version", "1").with("Date", &first_date),
    });
    let server = gateway(&origin, &[]);
    let stored = get(&server, "/v", &[]);
    assert_eq!(stored.header("x-version"), Some("1"));
    let origin_date = stored.header("date").unwrap().to_string();
    let hit = get(&server, "/v", &[]);
    assert_eq!(
        (x_cache(&hit), hit.header("date")),
        ("HIT", Some(origin_date.as_str())),
        "a hit keeps the origin's Date"
    );
    // The client asks for a revalidation (RFC 9111 §5.2.1.4).
    let refreshed = get(&server, "/v", &[("Cache-Control", "no-cache")]);
    assert_eq!((x_cache(&refreshed), refreshed.text().as_str()), ("REVALIDATED", "body"));
    assert!(cache_status(&refreshed).contains("fwd=request; fwd-status=304"), "{}", cache_status(&refreshed));
    assert_eq!(revalidated.load(Ordering::Acquire), 1);
    let hit = get(&server, "/v", &[]);
    assert_eq!(hit.header("x-version"), Some("2"), "the 304's fields replace the stored ones");
    assert_eq!(hit.header("date"), Some(later_date.as_str()), "and its Date");
}

#[test]
fn rfc9111_4_3_5_a_head_answer_updates_or_expires_the_stored_get() {
    let tag = Arc::new(std::sync::Mutex::new(("\"v1\"", "1")));
    let current = Arc::clone(&tag);
    let origin = Origin::start(move |_| {
        let (etag, version) = *current.lock().unwrap();
        Reply::ok("max-age=600", "body").with("ETag", etag).with("X-Version", version)
    });
    let server = gateway(&origin, &[]);
    assert_eq!(get(&server, "/h", &[]).header("x-version"), Some("1"));
    // A HEAD the gateway passes (it carries a cookie) with the same tag: its
    // fields update the stored GET response.
    *tag.lock().unwrap() = ("\"v1\"", "2");
    let head = request(&server, "HEAD", "/h", &[("Cookie", "session=1")]);
    assert_eq!(x_cache(&head), "BYPASS");
    let hit = get(&server, "/h", &[]);
    assert_eq!((x_cache(&hit), hit.header("x-version")), ("HIT", Some("2")));
    // Another tag: the stored response is stale now, and is fetched again.
    *tag.lock().unwrap() = ("\"v9\"", "9");
    request(&server, "HEAD", "/h", &[("Cookie", "session=1")]);
    let next = get(&server, "/h", &[]);
    assert_ne!(x_cache(&next), "HIT");
    assert_eq!(next.header("x-version"), Some("9"));
}

#[test]
fn rfc9111_4_4_unsafe_and_unknown_methods_invalidate_their_targets_and_locations() {
    let origin = Origin::start(|seen| match (seen.method.as_str(), seen.path.as_str()) {
        ("GET", path) => Reply::ok("max-age=600", &format!("stored {path}")),
        (_, "/e2") => Reply::status(201).with("Location", "http://other.test/d"),
        _ => Reply::status(201).with("Location", "/b").with("Content-Location", "http://API.test/c"),
    });
    let server = gateway(&origin, &[]);
    for path in ["/a", "/b", "/c", "/d", "/e"] {
        get(&server, path, &[]);
        assert_eq!(x_cache(&get(&server, path, &[])), "HIT", "{path}");
    }
    let other = request(&server, "GET", "/d", &[]);
    assert_eq!(x_cache(&other), "HIT");
    // An unknown method's non-error answer invalidates its target.
    assert_eq!(request(&server, "PROPPATCH", "/a", &[]).status, 201);
    assert_ne!(x_cache(&get(&server, "/a", &[])), "HIT", "PROPPATCH invalidated /a");
    // A POST's answer names /b and /c on the same host: both go (on
    // whichever shard owns them); /d is named on another host: it stays.
    assert_eq!(request(&server, "POST", "/e", &[]).status, 201);
    assert_eq!(request(&server, "POST", "/e2", &[]).status, 201);
    for (path, gone) in [("/b", true), ("/c", true), ("/e", true), ("/d", false)] {
        let check = |path: &str| (x_cache(&get(&server, path, &[])) != "HIT") == gone;
        eventually(&format!("{path} invalidated: {gone}"), || check(path));
    }
}

#[test]
fn rfc9111_4_3_2_if_modified_since_is_answered_from_the_cache() {
    let origin = digits();
    let server = gateway(&origin, &[]);
    get(&server, "/m", &[]);
    let not_modified = get(&server, "/m", &[("If-Modified-Since", LAST_MODIFIED)]);
    assert_eq!((not_modified.status, x_cache(&not_modified)), (304, "HIT"));
    let later = get(&server, "/m", &[("If-Modified-Since", DATE)]);
    assert_eq!(later.status, 304, "modified before the date asked about");
    let older = get(&server, "/m", &[("If-Modified-Since", "Sun, 01 Nov 2026 07:00:00 GMT")]);
    assert_eq!((older.status, older.text().as_str()), (200, "0123456789"));
    // If-None-Match decides when both are sent (RFC 9110 §13.2.2).
    let both = get(&server, "/m", &[("If-None-Match", "\"other\""), ("If-Modified-Since", DATE)]);
    assert_eq!(both.status, 200);
    assert_eq!(origin.count("/m"), 1);
}

#[test]
fn rfc9111_4_2_2_heuristic_freshness_is_opt_in() {
    let origin = Origin::start(|_| Reply::ok("", "h").with("Last-Modified", LAST_MODIFIED));
    let without = gateway(&origin, &[]);
    get(&without, "/h", &[]);
    assert_ne!(x_cache(&get(&without, "/h", &[])), "HIT", "no explicit freshness, no opt-in: not stored");
    let with = gateway(&origin, &["--heuristic-freshness", "10%"]);
    let miss = get(&with, "/h", &[]);
    assert!(cache_status(&miss).contains("stored"), "{}", cache_status(&miss));
    let hit = get(&with, "/h", &[]);
    assert_eq!(x_cache(&hit), "HIT");
    // 10% of the time since Last-Modified (the answer carries no Date: its arrival counts).
    let modified = httpdate::parse_http_date(LAST_MODIFIED).unwrap();
    let expected = std::time::SystemTime::now().duration_since(modified).unwrap().as_secs() as i64 / 10;
    let ttl: i64 = cache_status(&hit).rsplit("ttl=").next().unwrap().parse().unwrap();
    assert!((expected - 60..=expected + 60).contains(&ttl), "ttl {ttl}, expected about {expected}");
}

#[test]
fn rfc9111_5_2_2_3_must_understand_stores_only_understood_statuses() {
    let origin = Origin::start(|seen| {
        let mut reply = Reply::ok("must-understand, no-store, max-age=60", "m");
        if seen.path == "/odd" {
            reply.status = 299;
        }
        reply
    });
    let server = gateway(&origin, &[]);
    get(&server, "/ok", &[]);
    assert_eq!(x_cache(&get(&server, "/ok", &[])), "HIT", "no-store is ignored for an understood status");
    get(&server, "/odd", &[]);
    assert_ne!(x_cache(&get(&server, "/odd", &[])), "HIT");
}

#[test]
fn rfc9111_5_2_2_4_and_5_2_2_7_named_fields_are_not_served_from_the_cache() {
    let origin = Origin::start(|_| {
        Reply::ok("private=\"X-User\", no-cache=\"X-Debug, Set-Cookie\", max-age=60", "f")
            .with("X-User", "alice")
            .with("X-Debug", "1")
            .with("Set-Cookie", "session=abc")
            .with("X-Keep", "yes")
    });
    let server = gateway(&origin, &[]);
    let miss = get(&server, "/f", &[]);
    assert_eq!((x_cache(&miss), miss.header("x-user")), ("MISS", Some("alice")), "the direct answer is whole");
    let hit = get(&server, "/f", &[]);
    assert_eq!(x_cache(&hit), "HIT", "qualified private and no-cache store the response");
    for name in ["x-user", "x-debug", "set-cookie"] {
        assert!(hit.header(name).is_none(), "{name} served from the cache");
    }
    assert_eq!(hit.header("x-keep"), Some("yes"));
}

#[test]
fn rfc9213_targeted_fields_decide_for_the_cache_and_cdn_cache_control_is_forwarded() {
    let origin = Origin::start(|seen| match seen.path.as_str() {
        "/cdn" => Reply::ok("no-store", "c").with("CDN-Cache-Control", "max-age=60"),
        "/own" => Reply::ok("max-age=60", "o")
            .with("CDN-Cache-Control", "max-age=60")
            .with("Shardgate-Cache-Control", "no-store"),
        _ => Reply::ok("max-age=60", "i").with("Shardgate-Cache-Control", "Max-Age=Bad"),
    });
    let server = gateway(&origin, &[]);
    let first = get(&server, "/cdn", &[]);
    assert_eq!(first.header("cdn-cache-control"), Some("max-age=60"), "forwarded unchanged");
    assert_eq!(first.header("cache-control"), Some("no-store"));
    assert_eq!(x_cache(&get(&server, "/cdn", &[])), "HIT", "CDN-Cache-Control beats Cache-Control");
    let own = get(&server, "/own", &[]);
    assert!(own.header("shardgate-cache-control").is_none(), "addressed to shardgate: not forwarded");
    assert_ne!(x_cache(&get(&server, "/own", &[])), "HIT", "Shardgate-Cache-Control beats both");
    get(&server, "/invalid", &[]);
    assert_eq!(x_cache(&get(&server, "/invalid", &[])), "HIT", "an invalid targeted field is ignored");
}

#[test]
fn rfc9211_cache_status_says_what_the_cache_did() {
    let origin = Origin::start(|seen| match seen.path.as_str() {
        "/vary" => Reply::ok("max-age=60", "v").with("Vary", "X-Tenant"),
        _ => Reply::ok("max-age=60", "c").with("Cache-Status", "OriginCache; hit"),
    });
    let server = gateway(&origin, &["--cache-status-key"]);
    let miss = get(&server, "/c?q=1", &[]);
    let status = miss.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("cache-status")).count();
    assert_eq!(status, 2, "the origin's member first, then shardgate's");
    let mine = miss.headers.iter().rev().find(|(n, _)| n.eq_ignore_ascii_case("cache-status")).unwrap().1.clone();
    assert_eq!(mine, "shardgate; fwd=uri-miss; fwd-status=200; stored; ttl=60; key=\"http://api.test/c?q=1\"");
    let hit = get(&server, "/c?q=1", &[]);
    let mine = hit.headers.iter().rev().find(|(n, _)| n.eq_ignore_ascii_case("cache-status")).unwrap().1.clone();
    assert!(mine.starts_with("shardgate; hit; ttl="), "{mine}");
    get(&server, "/vary", &[("X-Tenant", "a")]);
    let vary_miss = get(&server, "/vary", &[("X-Tenant", "b")]);
    assert!(cache_status(&vary_miss).starts_with("shardgate; fwd=vary-miss; fwd-status=200; stored"));
    let bypass = get(&server, "/vary", &[("Cookie", "s=1")]);
    assert!(cache_status(&bypass).starts_with("shardgate; fwd=bypass; fwd-status=200"), "{}", cache_status(&bypass));
    let method = request(&server, "POST", "/vary", &[]);
    assert!(cache_status(&method).starts_with("shardgate; fwd=method; fwd-status=200"), "{}", cache_status(&method));
}

#[test]
fn coalesced_requests_are_marked_collapsed() {
    let origin = Origin::start(|_| Reply::ok("max-age=60", "slow").after(std::time::Duration::from_millis(300)));
    let server = gateway(&origin, &[]);
    let addr = server.addr;
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut client = crate::harness::Client::connect(addr);
                client.request("GET /slow HTTP/1.1\r\nHost: api.test\r\n\r\n")
            })
        })
        .collect();
    let statuses: Vec<String> = waiters.into_iter().map(|w| cache_status(&w.join().unwrap()).to_string()).collect();
    assert_eq!(origin.count("/slow"), 1);
    assert_eq!(statuses.iter().filter(|s| s.contains("collapsed")).count(), 3, "{statuses:?}");
}

#[test]
fn surrogate_keys_purge_on_every_shard_exactly() {
    let origin = Origin::start(|seen| match seen.path.as_str() {
        "/u1" => Reply::ok("max-age=600", "u1").with("Surrogate-Key", "user-1 users"),
        "/u2" => Reply::ok("max-age=600", "u2").with("Cache-Tag", "user-2,users"),
        "/u10" => Reply::ok("max-age=600", "u10").with("Surrogate-Key", "user-10"),
        _ => Reply::ok("max-age=600", "other"),
    });
    let server = gateway(&origin, &[]);
    let paths = ["/u1", "/u2", "/u10", "/x"];
    for path in paths {
        let stored = get(&server, path, &[]);
        assert!(stored.header("surrogate-key").is_none() && stored.header("cache-tag").is_none(), "stripped");
        assert_eq!(x_cache(&get(&server, path, &[])), "HIT");
    }
    let purge = |tags: &str, soft: bool| {
        let mut fields = vec![("Authorization", "Bearer s3cret"), ("Surrogate-Key", tags)];
        if soft {
            fields.push(("Soft-Purge", "1"));
        }
        let response = request(&server, "PURGE", "/", &fields);
        assert_eq!(response.status, 200, "{}", response.text());
        response.text()
    };
    assert_eq!(purge("user-1", false), "{\"purged\":1,\"soft\":false}", "user-10 is not user-1");
    let hit = |path| x_cache(&get(&server, path, &[])) == "HIT";
    assert!(!hit("/u1") && hit("/u10"));
    get(&server, "/u1", &[]);
    assert_eq!(purge("users missing-tag", false), "{\"purged\":2,\"soft\":false}");
    assert!(!hit("/u1") && !hit("/u2") && hit("/u10") && hit("/x"));
    let unauthorized = request(&server, "PURGE", "/", &[("Surrogate-Key", "users")]);
    unauthorized.assert_problem(401);
}

#[test]
fn a_soft_purge_is_served_stale_then_refreshed() {
    let version = Arc::new(AtomicUsize::new(1));
    let current = Arc::clone(&version);
    let origin = Origin::start(move |_| {
        let v = current.load(Ordering::Acquire);
        Reply::ok("max-age=600, stale-while-revalidate=60", &format!("v{v}")).with("Surrogate-Key", "page")
    });
    let server = gateway(&origin, &[]);
    assert_eq!(get(&server, "/s", &[]).text(), "v1");
    version.store(2, Ordering::Release);
    let purged = request(
        &server,
        "PURGE",
        "/",
        &[("Authorization", "Bearer s3cret"), ("Surrogate-Key", "page"), ("Soft-Purge", "1")],
    );
    assert_eq!(purged.text(), "{\"purged\":1,\"soft\":true}");
    let stale = get(&server, "/s", &[]);
    assert_eq!((x_cache(&stale), stale.text().as_str()), ("STALE", "v1"), "served stale while it revalidates");
    eventually("the soft-purged object refreshed", || get(&server, "/s", &[]).text() == "v2");
    assert_eq!(x_cache(&get(&server, "/s", &[])), "HIT");
}

#[test]
fn accept_encoding_variants_do_not_split_the_cache() {
    let origin = Origin::start(|seen| {
        let gzip = seen.header("accept-encoding").is_some_and(|v| v.contains("gzip"));
        let reply = Reply::ok("max-age=60", if gzip { "GZ" } else { "plain" }).with("Vary", "Accept-Encoding");
        if gzip {
            reply.with("Content-Encoding", "gzip")
        } else {
            reply
        }
    });
    let server = gateway(&origin, &[]);
    let first = get(&server, "/ae", &[("Accept-Encoding", "gzip, deflate, br")]);
    assert_eq!((x_cache(&first), first.text().as_str()), ("MISS", "GZ"));
    for accept in ["gzip", "br;q=1.0, gzip;q=0.5", "deflate, GZIP"] {
        let response = get(&server, "/ae", &[("Accept-Encoding", accept)]);
        assert_eq!((x_cache(&response), response.text().as_str()), ("HIT", "GZ"), "{accept}");
    }
    let identity = get(&server, "/ae", &[]);
    assert_eq!(
        (x_cache(&identity), identity.text().as_str()),
        ("MISS", "plain"),
        "no gzip for a client that did not ask"
    );
    let again = get(&server, "/ae", &[("Accept-Encoding", "identity")]);
    assert_eq!((x_cache(&again), again.text().as_str()), ("HIT", "plain"));
    assert_eq!(origin.count("/ae"), 2, "two codings, two fetches");
}
