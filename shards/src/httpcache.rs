//! The gateway's shared HTTP cache (RFC 9111 with RFC 5861's stale
//! extensions): which responses may be stored, how long they stay fresh,
//! which stored variant answers a request, and the memory budget.
//!
//! Time comes in as `now_ms`; header values come in as bytes. The caller
//! (the `io` gateway) does the talking to clients and origins.
//!
//! One [`Object`] per cache key (host, path and query) holds up to
//! [`VARIANTS_MAX`] variants, told apart by the request header values the
//! response's `Vary` names. Objects are evicted whole by S3-FIFO
//! ([`crate::evict`]) within the byte budget.

use std::borrow::Cow;
use std::rc::Rc;

use bytes::Bytes;
use hashbrown::HashMap;

use crate::evict::{Residents, S3Fifo, Slot};

/// Variants kept per cache key; the oldest is replaced beyond it.
pub const VARIANTS_MAX: usize = 8;
/// Header fields one `Vary` may name; more → not stored.
pub const VARY_NAMES_MAX: usize = 8;
/// How long an uncacheable answer sends a key's requests straight to the
/// origin (hit-for-miss), so they do not queue behind one another.
pub const HIT_FOR_MISS_MS: u64 = 10_000;
/// Hit-for-miss markers kept per shard; beyond it, new ones are not kept
/// (requests then coalesce again, which is slower but still correct).
pub const HIT_FOR_MISS_ENTRIES_MAX: usize = 65_536;
/// Bookkeeping bytes charged per variant besides its header and body bytes.
const VARIANT_OVERHEAD_BYTES: u64 = 128;

/// The `Cache-Control` directives a shared cache acts on (RFC 9111 §5.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub max_age_s: Option<u64>,
    pub s_maxage_s: Option<u64>,
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub stale_while_revalidate_s: Option<u64>,
    pub stale_if_error_s: Option<u64>,
}

impl CacheControl {
    /// Parses one or more comma-joined field values. Unknown directives are
    /// ignored; a malformed delta-seconds makes its directive count as
    /// absent except `max-age`/`s-maxage`, which then count as 0 (stale: the
    /// safe reading, RFC 9111 §4.2.1).
    pub fn parse(value: &[u8]) -> CacheControl {
        let mut control = CacheControl::default();
        for directive in split_list(value) {
            let (name, argument) = match directive.iter().position(|&b| b == b'=') {
                Some(i) => (trim(&directive[..i]), Some(unquote(trim(&directive[i + 1..])))),
                None => (directive, None),
            };
            let seconds = argument.and_then(parse_seconds);
            let lower = name.to_ascii_lowercase();
            match lower.as_slice() {
                b"max-age" => control.max_age_s = Some(seconds.unwrap_or(0)),
                b"s-maxage" => control.s_maxage_s = Some(seconds.unwrap_or(0)),
                b"no-store" => control.no_store = true,
                b"no-cache" => control.no_cache = true,
                // `private="field"` limits what may be stored; not storing at all is the safe reading.
                b"private" => control.private = true,
                b"public" => control.public = true,
                b"must-revalidate" => control.must_revalidate = true,
                b"proxy-revalidate" => control.proxy_revalidate = true,
                b"stale-while-revalidate" => control.stale_while_revalidate_s = seconds,
                b"stale-if-error" => control.stale_if_error_s = seconds,
                _ => {}
            }
        }
        control
    }
}

/// The response fields that decide storage and freshness, as received.
#[derive(Clone, Copy, Debug, Default)]
pub struct ResponseFields<'a> {
    pub status: u16,
    pub cache_control: Option<&'a [u8]>,
    pub expires: Option<&'a [u8]>,
    pub date: Option<&'a [u8]>,
    pub age: Option<&'a [u8]>,
    pub vary: Option<&'a [u8]>,
    /// `ETag` or `Last-Modified` is present (a `no-cache` answer is useful
    /// only when it can be revalidated).
    pub has_validator: bool,
    /// The response sets a cookie: it belongs to one client, whatever its
    /// `Cache-Control` says, and is never stored (Varnish's builtin VCL).
    pub sets_cookie: bool,
}

/// The request facts storage depends on.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestFacts {
    /// GET or HEAD (only they are stored).
    pub cacheable_method: bool,
    pub has_authorization: bool,
}

/// How long a stored response stays usable, on the cache's clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Freshness {
    /// When the response arrived.
    pub response_ms: u64,
    /// Its age on arrival (RFC 9111 §4.2.3 `corrected_initial_age`).
    pub initial_age_ms: u64,
    pub lifetime_ms: u64,
    /// May be served stale while one revalidation runs (RFC 5861 §3).
    pub stale_while_revalidate_ms: u64,
    /// May be served stale instead of an origin error (RFC 5861 §4).
    pub stale_if_error_ms: u64,
}

/// Whether a stored variant may be served as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Fresh,
    /// Stale; `revalidate_in_background` when stale-while-revalidate
    /// still covers it, `on_error` when stale-if-error does.
    Stale {
        revalidate_in_background: bool,
        on_error: bool,
    },
}

impl Freshness {
    /// The age to send in `Age`, in milliseconds (RFC 9111 §4.2.3).
    pub fn age_ms(&self, now_ms: u64) -> u64 {
        self.initial_age_ms.saturating_add(now_ms.saturating_sub(self.response_ms))
    }

    pub fn state(&self, now_ms: u64) -> State {
        let age_ms = self.age_ms(now_ms);
        if age_ms < self.lifetime_ms {
            return State::Fresh;
        }
        let staleness_ms = age_ms - self.lifetime_ms;
        State::Stale {
            revalidate_in_background: staleness_ms < self.stale_while_revalidate_ms,
            on_error: staleness_ms < self.stale_if_error_ms,
        }
    }
}

/// Why a response is not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotStored {
    Method,
    Status,
    NoStore,
    Private,
    Authorization,
    /// The response carries `Set-Cookie`.
    SetCookie,
    VaryStar,
    /// No explicit freshness and no `--default-ttl`.
    NoFreshness,
}

/// Statuses a cache may store with heuristic (here: `--default-ttl`)
/// freshness (RFC 9110 §15.1).
fn heuristically_cacheable(status: u16) -> bool {
    matches!(status, 200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501)
}

/// Decides whether a response may be stored (RFC 9111 §3) and computes its
/// freshness (§4.2). `request_ms` is when the request went to the origin,
/// `response_ms` when its answer arrived; `default_ttl_ms` of 0 stores only
/// responses with explicit freshness.
pub fn storable(
    request: RequestFacts,
    response: &ResponseFields<'_>,
    request_ms: u64,
    response_ms: u64,
    default_ttl_ms: u64,
) -> Result<Freshness, NotStored> {
    if !request.cacheable_method {
        return Err(NotStored::Method);
    }
    if matches!(response.status, 100..=199 | 206 | 304) || response.status > 599 {
        return Err(NotStored::Status);
    }
    if response.sets_cookie {
        return Err(NotStored::SetCookie);
    }
    let control = response.cache_control.map(CacheControl::parse).unwrap_or_default();
    if control.no_store {
        return Err(NotStored::NoStore);
    }
    if control.private {
        return Err(NotStored::Private);
    }
    if request.has_authorization && !(control.public || control.s_maxage_s.is_some() || control.must_revalidate) {
        return Err(NotStored::Authorization);
    }
    if response.vary.is_some_and(|vary| vary_names(vary).is_err()) {
        return Err(NotStored::VaryStar);
    }
    let date_ms = response.date.and_then(parse_http_date_ms);
    let explicit_ms = if let Some(seconds) = control.s_maxage_s.or(control.max_age_s) {
        Some(seconds.saturating_mul(1000))
    } else {
        // A malformed Expires means already expired (RFC 9111 §5.3).
        response.expires.map(|expires| match parse_http_date_ms(expires) {
            Some(expires_ms) => expires_ms.saturating_sub(date_ms.unwrap_or(response_ms)),
            None => 0,
        })
    };
    let lifetime_ms = match explicit_ms {
        Some(ms) => ms,
        None if default_ttl_ms > 0 && heuristically_cacheable(response.status) => default_ttl_ms,
        None => return Err(NotStored::NoFreshness),
    };
    if control.no_cache && !response.has_validator {
        return Err(NotStored::NoStore);
    }
    let apparent_age_ms = date_ms.map_or(0, |date| response_ms.saturating_sub(date));
    let age_value_ms = response.age.and_then(|age| parse_seconds(trim(age))).unwrap_or(0).saturating_mul(1000);
    let corrected_age_ms = age_value_ms.saturating_add(response_ms.saturating_sub(request_ms));
    // must-revalidate / proxy-revalidate forbid serving stale at all; no-cache means every use revalidates.
    let stale_allowed = !(control.must_revalidate || control.proxy_revalidate || control.no_cache);
    let stale_ms = |seconds: Option<u64>| if stale_allowed { seconds.unwrap_or(0).saturating_mul(1000) } else { 0 };
    Ok(Freshness {
        response_ms,
        initial_age_ms: apparent_age_ms.max(corrected_age_ms),
        lifetime_ms: if control.no_cache { 0 } else { lifetime_ms },
        stale_while_revalidate_ms: stale_ms(control.stale_while_revalidate_s),
        stale_if_error_ms: stale_ms(control.stale_if_error_s),
    })
}

/// The field names a `Vary` value lists, lower-cased; `Err` for `Vary: *`
/// or more than [`VARY_NAMES_MAX`] names (neither is stored).
pub fn vary_names(value: &[u8]) -> Result<Vec<Bytes>, NotStored> {
    let mut names = Vec::new();
    for name in split_list(value) {
        if name == b"*" || names.len() == VARY_NAMES_MAX {
            return Err(NotStored::VaryStar);
        }
        let lower = Bytes::from(name.to_ascii_lowercase());
        if !names.contains(&lower) {
            names.push(lower);
        }
    }
    Ok(names)
}

/// One stored response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variant {
    /// The request's values of the object's `Vary` fields (None: absent),
    /// in the order of [`Object::vary`].
    pub vary_values: Vec<Option<Bytes>>,
    pub status: u16,
    pub reason: Bytes,
    /// End-to-end header lines as received (`Name: value\r\n` each), without
    /// hop-by-hop, framing and `Age` fields.
    pub headers: Bytes,
    pub body: Bytes,
    pub etag: Option<Bytes>,
    pub last_modified: Option<Bytes>,
    pub freshness: Freshness,
}

impl Variant {
    fn bytes(&self) -> u64 {
        let vary: usize = self.vary_values.iter().flatten().map(Bytes::len).sum();
        (self.headers.len() + self.body.len() + self.reason.len() + vary) as u64 + VARIANT_OVERHEAD_BYTES
    }
}

/// Everything stored under one cache key.
#[derive(Debug)]
pub struct Object {
    key: Bytes,
    /// The lower-cased field names of the latest stored response's `Vary`.
    vary: Vec<Bytes>,
    /// Shared with the responses being served from them: a hit costs a
    /// reference count, not a copy.
    variants: Vec<Rc<Variant>>,
    slot: Slot,
    bytes: u64,
}

impl Object {
    fn bytes_of(key: &Bytes, variants: &[Rc<Variant>]) -> u64 {
        key.len() as u64 + variants.iter().map(|v| v.bytes()).sum::<u64>()
    }
}

/// What a lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Hit {
        variant: Rc<Variant>,
        state: State,
    },
    /// A recent answer for this key was uncacheable: go to the origin
    /// without waiting for other requests of the key.
    HitForMiss,
    Miss,
}

/// One shard's HTTP cache.
pub struct HttpCache {
    objects: HashMap<u64, Object>,
    hit_for_miss: HashMap<u64, u64>,
    fifo: S3Fifo,
    evictions: u64,
}

struct Objects<'a> {
    objects: &'a mut HashMap<u64, Object>,
    evictions: &'a mut u64,
}

impl Residents for Objects<'_> {
    fn find(&mut self, hash: u64, generation: u32) -> Option<(&mut Slot, u64, bool)> {
        let object = self.objects.get_mut(&hash).filter(|o| o.slot.generation == generation && o.slot.is_held())?;
        Some((&mut object.slot, object.bytes, true))
    }

    fn evict(&mut self, hash: u64, generation: u32) {
        if self.objects.get(&hash).is_some_and(|o| o.slot.generation == generation) {
            self.objects.remove(&hash);
            *self.evictions += 1;
        }
    }
}

impl HttpCache {
    pub fn new(bytes_max: u64) -> HttpCache {
        HttpCache { objects: HashMap::new(), hit_for_miss: HashMap::new(), fifo: S3Fifo::new(bytes_max), evictions: 0 }
    }

    pub fn bytes(&self) -> u64 {
        self.fifo.bytes()
    }

    pub fn objects(&self) -> usize {
        self.objects.len()
    }

    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Finds the variant of `key` (hashing to `hash`) that matches the
    /// request, whose header values `request_field` returns by lower-case
    /// name. A hit counts as a read for eviction.
    pub fn lookup<'r>(
        &mut self,
        now_ms: u64,
        hash: u64,
        key: &[u8],
        request_field: impl Fn(&[u8]) -> Option<Cow<'r, [u8]>>,
    ) -> Lookup {
        if let Some(&until_ms) = self.hit_for_miss.get(&hash) {
            if now_ms < until_ms {
                return Lookup::HitForMiss;
            }
            self.hit_for_miss.remove(&hash);
        }
        let Some(object) = self.objects.get_mut(&hash).filter(|o| o.key == key) else {
            return Lookup::Miss;
        };
        let wanted: Vec<Option<Cow<'r, [u8]>>> = object.vary.iter().map(|name| request_field(name)).collect();
        let found = object.variants.iter().find(|v| {
            v.vary_values.len() == wanted.len()
                && v.vary_values.iter().zip(&wanted).all(|(have, want)| have.as_deref() == want.as_deref().map(trim))
        });
        match found {
            Some(variant) => {
                object.slot.touch();
                Lookup::Hit { variant: Rc::clone(variant), state: variant.freshness.state(now_ms) }
            }
            None => Lookup::Miss,
        }
    }

    /// The request's values of `vary` names, as a variant stores them.
    /// `request_field` gives a field's whole value: all its lines, combined
    /// (RFC 9110 §5.3), as the origin received them.
    pub fn vary_values<'r>(
        vary: &[Bytes],
        request_field: impl Fn(&[u8]) -> Option<Cow<'r, [u8]>>,
    ) -> Vec<Option<Bytes>> {
        vary.iter().map(|name| request_field(name).map(|v| Bytes::copy_from_slice(trim(&v)))).collect()
    }

    /// Stores `variant` under `key` with the response's `vary` names,
    /// replacing the variant with the same request values. A different
    /// `Vary` than the stored one replaces every variant. Clears a
    /// hit-for-miss marker. Returns false when the object alone exceeds the
    /// budget (not stored).
    pub fn store(&mut self, hash: u64, key: Bytes, vary: Vec<Bytes>, variant: Variant) -> bool {
        self.hit_for_miss.remove(&hash);
        let collides = self.objects.get(&hash).is_some_and(|o| o.key != key);
        if collides {
            self.remove(hash);
        }
        let (slot, old_bytes, mut variants) = match self.objects.remove(&hash) {
            Some(object) if object.vary == vary => (object.slot, object.bytes, object.variants),
            Some(object) => {
                self.fifo.forget(&object.slot, object.bytes);
                (Slot::default(), 0, Vec::new())
            }
            None => (Slot::default(), 0, Vec::new()),
        };
        variants.retain(|v| v.vary_values != variant.vary_values);
        if variants.len() == VARIANTS_MAX {
            variants.remove(0);
        }
        variants.push(Rc::new(variant));
        let bytes = Object::bytes_of(&key, &variants);
        let slot = if slot.is_held() {
            self.fifo.resize(&slot, old_bytes, bytes);
            slot
        } else {
            self.fifo.admit(hash, bytes)
        };
        self.objects.insert(hash, Object { key, vary, variants, slot, bytes });
        let mut residents = Objects { objects: &mut self.objects, evictions: &mut self.evictions };
        self.fifo.make_room(&mut residents);
        self.objects.contains_key(&hash)
    }

    /// A `304` revalidated the variant whose validators match: its
    /// freshness becomes `freshness` and its header lines `headers` (RFC
    /// 9111 §4.3.4 updates the stored fields from the 304). Returns the
    /// refreshed variant, or None when none is stored any more.
    pub fn refresh(
        &mut self,
        hash: u64,
        key: &[u8],
        vary_values: &[Option<Bytes>],
        freshness: Freshness,
        headers: Option<Bytes>,
    ) -> Option<Rc<Variant>> {
        let object = self.objects.get_mut(&hash).filter(|o| o.key == key)?;
        let stored = object.variants.iter_mut().find(|v| v.vary_values == vary_values)?;
        let variant = Rc::make_mut(stored);
        variant.freshness = freshness;
        if let Some(headers) = headers {
            variant.headers = headers;
        }
        let variant = Rc::clone(stored);
        let bytes = Object::bytes_of(&object.key, &object.variants);
        self.fifo.resize(&object.slot, object.bytes, bytes);
        object.bytes = bytes;
        Some(variant)
    }

    /// Drops every variant of `key`. Returns whether anything was stored.
    pub fn remove(&mut self, hash: u64) -> bool {
        self.hit_for_miss.remove(&hash);
        match self.objects.remove(&hash) {
            Some(object) => {
                self.fifo.forget(&object.slot, object.bytes);
                true
            }
            None => false,
        }
    }

    /// Remembers that `key`'s answer was uncacheable until `now_ms` +
    /// [`HIT_FOR_MISS_MS`].
    pub fn mark_hit_for_miss(&mut self, now_ms: u64, hash: u64) {
        if self.hit_for_miss.len() >= HIT_FOR_MISS_ENTRIES_MAX {
            self.hit_for_miss.retain(|_, until_ms| *until_ms > now_ms);
            if self.hit_for_miss.len() >= HIT_FOR_MISS_ENTRIES_MAX {
                return;
            }
        }
        self.hit_for_miss.insert(hash, now_ms + HIT_FOR_MISS_MS);
    }
}

/// The elements of a comma-separated list field, trimmed, empty ones
/// skipped; commas inside quoted strings do not split.
fn split_list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = value;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let mut quoted = false;
        let mut end = rest.len();
        for (i, &b) in rest.iter().enumerate() {
            match b {
                b'"' => quoted = !quoted,
                b',' if !quoted => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let element = trim(&rest[..end]);
        rest = rest.get(end + 1..).unwrap_or_default();
        if !element.is_empty() {
            return Some(element);
        }
    })
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |i| i + 1);
    &bytes[start..end.max(start)]
}

fn unquote(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\"").and_then(|b| b.strip_suffix(b"\"")).unwrap_or(bytes)
}

/// delta-seconds (RFC 9111 §1.2.2): digits only; too large saturates.
fn parse_seconds(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(bytes.iter().fold(0u64, |n, &d| n.saturating_mul(10).saturating_add(u64::from(d - b'0'))))
}

/// An HTTP-date (IMF-fixdate and the two obsolete forms) in Unix milliseconds.
pub fn parse_http_date_ms(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(trim(value)).ok()?;
    let time = httpdate::parse_http_date(text).ok()?;
    time.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
