//! Which responses a shared cache may store and for how long (RFC 9111 §3,
//! §4.2, §5; RFC 5861; RFC 9213's targeted fields).

use bytes::Bytes;

use super::{parse_http_date_ms, split_list, trim, unquote};

/// The `Cache-Control` directives a shared cache acts on (RFC 9111 §5.2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub max_age_s: Option<u64>,
    pub s_maxage_s: Option<u64>,
    pub no_store: bool,
    /// Unqualified `no-cache`: every use revalidates.
    pub no_cache: bool,
    /// `no-cache="a, b"` (§5.2.2.4): these fields are not served from the
    /// cache; the rest of the response is.
    pub no_cache_fields: Vec<Bytes>,
    /// Unqualified `private`: not stored by a shared cache.
    pub private: bool,
    /// `private="a, b"` (§5.2.2.7): stored without these fields.
    pub private_fields: Vec<Bytes>,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    /// §5.2.2.3: store only when the status code is understood.
    pub must_understand: bool,
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
                b"no-cache" => match argument.map(field_names) {
                    Some(names) if !names.is_empty() => control.no_cache_fields.extend(names),
                    _ => control.no_cache = true,
                },
                b"private" => match argument.map(field_names) {
                    Some(names) if !names.is_empty() => control.private_fields.extend(names),
                    _ => control.private = true,
                },
                b"public" => control.public = true,
                b"must-revalidate" => control.must_revalidate = true,
                b"proxy-revalidate" => control.proxy_revalidate = true,
                b"must-understand" => control.must_understand = true,
                b"stale-while-revalidate" => control.stale_while_revalidate_s = seconds,
                b"stale-if-error" => control.stale_if_error_s = seconds,
                _ => {}
            }
        }
        control
    }

    /// A targeted field's value (RFC 9213 §2.1: a Structured Fields
    /// Dictionary), or None when it is empty or not a valid dictionary: the
    /// cache then falls back to the next field.
    pub fn parse_targeted(value: &[u8]) -> Option<CacheControl> {
        let members: Vec<&[u8]> = split_list(value).collect();
        if members.is_empty() || !members.iter().all(|member| is_dictionary_member(member)) {
            return None;
        }
        Some(CacheControl::parse(value))
    }
}

/// `key[=value][;params]` of a Structured Fields Dictionary (RFC 8941
/// §3.2): a lower-case key, and a value that is an integer, a decimal, a
/// token, a quoted string or a boolean.
fn is_dictionary_member(member: &[u8]) -> bool {
    let item = member.split(|&b| b == b';').next().unwrap_or_default();
    let (key, value) = match item.iter().position(|&b| b == b'=') {
        Some(i) => (&item[..i], Some(&item[i + 1..])),
        None => (item, None),
    };
    let key_ok = key.first().is_some_and(|&b| b.is_ascii_lowercase() || b == b'*')
        && key.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b));
    let value_ok = match value {
        None => true,
        Some(v) => {
            let number = v.strip_prefix(b"-").unwrap_or(v);
            let numeric = !number.is_empty() && number.iter().all(|&b| b.is_ascii_digit() || b == b'.');
            let token = v.first().is_some_and(|&b| b.is_ascii_alphabetic() || b == b'*')
                && v.iter().all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b));
            let string = v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"';
            numeric || token || string || v == b"?0" || v == b"?1"
        }
    };
    key_ok && value_ok
}

/// The field names of a qualified `no-cache` or `private`, lower-cased.
fn field_names(argument: &[u8]) -> Vec<Bytes> {
    split_list(argument).map(|name| Bytes::from(name.to_ascii_lowercase())).collect()
}

/// The response fields that decide storage and freshness, as received.
#[derive(Clone, Copy, Debug, Default)]
pub struct ResponseFields<'a> {
    pub status: u16,
    pub cache_control: Option<&'a [u8]>,
    /// RFC 9213: `CDN-Cache-Control`, and shardgate's own targeted field
    /// `Shardgate-Cache-Control`, which beats it.
    pub cdn_cache_control: Option<&'a [u8]>,
    pub shardgate_cache_control: Option<&'a [u8]>,
    pub expires: Option<&'a [u8]>,
    pub date: Option<&'a [u8]>,
    pub age: Option<&'a [u8]>,
    pub vary: Option<&'a [u8]>,
    pub last_modified: Option<&'a [u8]>,
    /// `ETag` or `Last-Modified` is present (a `no-cache` answer is useful
    /// only when it can be revalidated).
    pub has_validator: bool,
    /// The response sets a cookie: it belongs to one client, whatever its
    /// `Cache-Control` says, and is never stored (Varnish's builtin VCL),
    /// unless the cookie is one of the fields it says to leave out.
    pub sets_cookie: bool,
}

impl ResponseFields<'_> {
    /// The directives this cache obeys (RFC 9213 §2.2): the first valid
    /// targeted field, `Shardgate-Cache-Control` then `CDN-Cache-Control`;
    /// else `Cache-Control`. The second value is true when a targeted field
    /// decided, in which case `Expires` is ignored too.
    pub fn control(&self) -> (CacheControl, bool) {
        let targeted = [self.shardgate_cache_control, self.cdn_cache_control];
        for value in targeted.into_iter().flatten() {
            if let Some(control) = CacheControl::parse_targeted(value) {
                return (control, true);
            }
        }
        (self.cache_control.map(CacheControl::parse).unwrap_or_default(), false)
    }
}

/// The request facts storage depends on.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestFacts {
    /// GET or HEAD (only they are stored).
    pub cacheable_method: bool,
    pub has_authorization: bool,
}

/// How the operator lets the cache compute freshness a response does not give.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Heuristics {
    /// `--default-ttl` for heuristically cacheable statuses; 0: none.
    pub default_ttl_ms: u64,
    /// `--heuristic-freshness`: this percentage of the time since
    /// `Last-Modified` (RFC 9111 §4.2.2); 0: off.
    pub last_modified_percent: u32,
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

    /// Seconds of freshness left, negative once stale (`Cache-Status`
    /// `ttl`): the lifetime less the age, both in whole seconds as `Age`
    /// counts them.
    pub fn ttl_s(&self, now_ms: u64) -> i64 {
        let lifetime_s = (self.lifetime_ms / 1000).min(i64::MAX as u64) as i64;
        let age_s = (self.age_ms(now_ms) / 1000).min(i64::MAX as u64) as i64;
        lifetime_s.saturating_sub(age_s)
    }

    /// Stale from `now_ms` on (a soft purge, a HEAD that disagrees): the
    /// stale windows count from now, so stale-while-revalidate and
    /// stale-if-error may still serve it while it revalidates.
    pub fn expire(&mut self, now_ms: u64) {
        self.lifetime_ms = self.lifetime_ms.min(self.age_ms(now_ms));
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
    /// No explicit freshness and no heuristic allowed.
    NoFreshness,
    /// `must-understand` with a status code this cache does not implement.
    MustUnderstand,
}

/// A response that may be stored: how long it is fresh, and the fields
/// that must not be served from the cache (`private=`/`no-cache=` names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub freshness: Freshness,
    /// Lower-case field names to leave out of what is stored.
    pub strip: Vec<Bytes>,
}

/// Statuses a cache may store with heuristic freshness (RFC 9110 §15.1).
pub fn heuristically_cacheable(status: u16) -> bool {
    matches!(status, 200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501)
}

/// Status codes whose caching requirements this cache implements, for
/// `must-understand` (RFC 9111 §5.2.2.3): the final codes of RFC 9110 but
/// 206 (this cache stores no partial content).
fn understood(status: u16) -> bool {
    matches!(status, 200..=205 | 300..=305 | 307 | 308 | 400..=417 | 421 | 422 | 426 | 500..=505)
}

/// Decides whether a response may be stored (RFC 9111 §3) and computes its
/// freshness (§4.2). `request_ms` is when the request went to the origin,
/// `response_ms` when its answer arrived.
pub fn storable(
    request: RequestFacts,
    response: &ResponseFields<'_>,
    request_ms: u64,
    response_ms: u64,
    heuristics: Heuristics,
) -> Result<Stored, NotStored> {
    if !request.cacheable_method {
        return Err(NotStored::Method);
    }
    if matches!(response.status, 100..=199 | 206 | 304) || response.status > 599 {
        return Err(NotStored::Status);
    }
    let (control, targeted) = response.control();
    // §5.2.2.3: with must-understand, no-store is ignored for a status the
    // cache understands, and nothing is stored for one it does not.
    if control.must_understand && !understood(response.status) {
        return Err(NotStored::MustUnderstand);
    }
    if control.no_store && !control.must_understand {
        return Err(NotStored::NoStore);
    }
    if control.private {
        return Err(NotStored::Private);
    }
    let mut strip: Vec<Bytes> = control.private_fields.iter().chain(&control.no_cache_fields).cloned().collect();
    strip.sort();
    strip.dedup();
    if response.sets_cookie && !strip.iter().any(|name| &name[..] == b"set-cookie") {
        return Err(NotStored::SetCookie);
    }
    if request.has_authorization && !(control.public || control.s_maxage_s.is_some() || control.must_revalidate) {
        return Err(NotStored::Authorization);
    }
    if response.vary.is_some_and(|vary| super::vary_names(vary).is_err()) {
        return Err(NotStored::VaryStar);
    }
    let date_ms = response.date.and_then(parse_http_date_ms);
    let lifetime_ms = match explicit_lifetime_ms(&control, targeted, response, date_ms, response_ms) {
        Some(ms) => ms,
        None => heuristic_lifetime_ms(&control, response, date_ms.unwrap_or(response_ms), heuristics)
            .ok_or(NotStored::NoFreshness)?,
    };
    if control.no_cache && !response.has_validator {
        return Err(NotStored::NoStore);
    }
    let apparent_age_ms = date_ms.map_or(0, |date| response_ms.saturating_sub(date));
    let age_value_ms = response.age.and_then(parse_age).unwrap_or(0).saturating_mul(1000);
    let corrected_age_ms = age_value_ms.saturating_add(response_ms.saturating_sub(request_ms));
    // must-revalidate / proxy-revalidate forbid serving stale at all; no-cache means every use revalidates.
    let stale_allowed = !(control.must_revalidate || control.proxy_revalidate || control.no_cache);
    let stale_ms = |seconds: Option<u64>| if stale_allowed { seconds.unwrap_or(0).saturating_mul(1000) } else { 0 };
    let freshness = Freshness {
        response_ms,
        initial_age_ms: apparent_age_ms.max(corrected_age_ms),
        lifetime_ms: if control.no_cache { 0 } else { lifetime_ms },
        stale_while_revalidate_ms: stale_ms(control.stale_while_revalidate_s),
        stale_if_error_ms: stale_ms(control.stale_if_error_s),
    };
    Ok(Stored { freshness, strip })
}

/// `s-maxage`, `max-age`, or `Expires` relative to `Date` (§4.2.1); a
/// targeted field's directives ignore `Expires` (RFC 9213 §2.2).
fn explicit_lifetime_ms(
    control: &CacheControl,
    targeted: bool,
    response: &ResponseFields<'_>,
    date_ms: Option<u64>,
    response_ms: u64,
) -> Option<u64> {
    if let Some(seconds) = control.s_maxage_s.or(control.max_age_s) {
        return Some(seconds.saturating_mul(1000));
    }
    if targeted {
        return None;
    }
    // A malformed Expires means already expired (RFC 9111 §5.3).
    response.expires.map(|expires| match parse_http_date_ms(expires) {
        Some(expires_ms) => expires_ms.saturating_sub(date_ms.unwrap_or(response_ms)),
        None => 0,
    })
}

/// Heuristic freshness (§4.2.2), for heuristically cacheable statuses or
/// responses marked `public`: a share of the time since `Last-Modified`
/// when enabled and known, else `--default-ttl`.
fn heuristic_lifetime_ms(
    control: &CacheControl,
    response: &ResponseFields<'_>,
    date_ms: u64,
    heuristics: Heuristics,
) -> Option<u64> {
    if !(heuristically_cacheable(response.status) || control.public) {
        return None;
    }
    let from_last_modified = response
        .last_modified
        .and_then(parse_http_date_ms)
        .filter(|_| heuristics.last_modified_percent > 0)
        .map(|modified_ms| date_ms.saturating_sub(modified_ms) / 100 * u64::from(heuristics.last_modified_percent))
        .filter(|&ms| ms > 0);
    from_last_modified.or((heuristics.default_ttl_ms > 0).then_some(heuristics.default_ttl_ms))
}

/// `Age` (RFC 9111 §5.1): the first member of the field value, which must
/// be a non-negative integer; anything else means the field is ignored.
pub fn parse_age(value: &[u8]) -> Option<u64> {
    let first = value.split(|&b| b == b',').next().unwrap_or_default();
    parse_seconds(trim(first))
}

/// delta-seconds (RFC 9111 §1.2.2): digits only; too large saturates.
pub(super) fn parse_seconds(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(bytes.iter().fold(0u64, |n, &d| n.saturating_mul(10).saturating_add(u64::from(d - b'0'))))
}
