//! The gateway's shared HTTP cache (RFC 9111 with RFC 5861's stale
//! extensions and RFC 9213's targeted fields): which responses may be
//! stored, how long they stay fresh, which stored variant answers a
//! request, the surrogate-key index, and the memory budget.
//!
//! Time comes in as `now_ms`; header values come in as bytes. The caller
//! (the `io` gateway) does the talking to clients and origins.
//!
//! One [`Object`] per cache key (host, path and query) holds up to
//! [`VARIANTS_MAX`] variants, told apart by the request header values the
//! response's `Vary` names (`Accept-Encoding` by the coding each variant
//! has: [`coding`]). Objects are evicted whole by S3-FIFO ([`crate::evict`])
//! within the byte budget. Objects may carry surrogate keys (tags); a tag
//! names every object that carries it, within the index's own budget
//! ([`tags`]).

pub mod coding;
mod rules;
pub mod tags;

use std::borrow::Cow;
use std::rc::Rc;

use bytes::Bytes;
use hashbrown::HashMap;

pub use rules::{
    heuristically_cacheable, parse_age, storable, CacheControl, Freshness, Heuristics, NotStored, RequestFacts,
    ResponseFields, State, Stored,
};
use tags::TagIndex;

use crate::evict::{Residents, S3Fifo, Slot};
use crate::pieces::Pieces;

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
    /// in the order of [`Object::vary`]; for `accept-encoding`, the coding
    /// the variant has ([`coding::coding_key`]).
    pub vary_values: Vec<Option<Bytes>>,
    pub status: u16,
    pub reason: Bytes,
    /// End-to-end header lines as received (`\r\nName: value` each), without
    /// hop-by-hop, framing, `Date` and `Age` fields and without the fields
    /// `private=`/`no-cache=` name.
    pub headers: Bytes,
    pub body: Pieces,
    pub etag: Option<Bytes>,
    pub last_modified: Option<Bytes>,
    /// The `Date` served with it: the origin's, or when the response came
    /// without one, when it arrived (RFC 9110 §6.6.1). Kept formatted:
    /// a hit copies it, no reference count.
    pub date: HttpDate,
    pub freshness: Freshness,
}

impl Variant {
    fn bytes(&self) -> u64 {
        let vary: usize = self.vary_values.iter().flatten().map(Bytes::len).sum();
        let fields = self.headers.len() + self.reason.len() + vary;
        fields as u64 + self.body.len() + VARIANT_OVERHEAD_BYTES
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
    /// Its surrogate keys (the latest stored response's).
    tags: Vec<Bytes>,
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
    /// Nothing stored for the key.
    Miss,
    /// Responses stored for the key, none for this request's `Vary` values.
    VaryMiss,
}

/// One shard's HTTP cache.
pub struct HttpCache {
    objects: HashMap<u64, Object>,
    hit_for_miss: HashMap<u64, u64>,
    fifo: S3Fifo,
    tags: TagIndex,
    evictions: u64,
}

struct Objects<'a> {
    objects: &'a mut HashMap<u64, Object>,
    tags: &'a mut TagIndex,
    evictions: &'a mut u64,
}

impl Residents for Objects<'_> {
    fn find(&mut self, hash: u64, generation: u32) -> Option<(&mut Slot, u64, bool)> {
        let object = self.objects.get_mut(&hash).filter(|o| o.slot.generation == generation && o.slot.is_held())?;
        Some((&mut object.slot, object.bytes, true))
    }

    fn evict(&mut self, hash: u64, generation: u32) {
        if self.objects.get(&hash).is_some_and(|o| o.slot.generation == generation) {
            if let Some(object) = self.objects.remove(&hash) {
                self.tags.remove(hash, &object.tags);
            }
            *self.evictions += 1;
        }
    }
}

/// How a request names the values of its header fields: by lower-case
/// name, the whole value (all lines combined).
pub trait RequestField<'r>: Fn(&[u8]) -> Option<Cow<'r, [u8]>> {}
impl<'r, F: Fn(&[u8]) -> Option<Cow<'r, [u8]>>> RequestField<'r> for F {}

impl HttpCache {
    /// A cache of `bytes_max` for responses and `tag_bytes_max` for its
    /// surrogate-key index.
    pub fn new(bytes_max: u64, tag_bytes_max: u64) -> HttpCache {
        HttpCache {
            objects: HashMap::new(),
            hit_for_miss: HashMap::new(),
            fifo: S3Fifo::new(bytes_max),
            tags: TagIndex::new(tag_bytes_max),
            evictions: 0,
        }
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

    /// Bytes the surrogate-key index holds.
    pub fn tag_bytes(&self) -> u64 {
        self.tags.bytes()
    }

    /// Finds the variant of `key` (hashing to `hash`) that matches the
    /// request. A hit counts as a read for eviction.
    pub fn lookup<'r>(&mut self, now_ms: u64, hash: u64, key: &[u8], request_field: impl RequestField<'r>) -> Lookup {
        if let Some(&until_ms) = self.hit_for_miss.get(&hash) {
            if now_ms < until_ms {
                return Lookup::HitForMiss;
            }
            self.hit_for_miss.remove(&hash);
        }
        let Some(object) = self.objects.get_mut(&hash).filter(|o| o.key == key) else {
            return Lookup::Miss;
        };
        match select(&object.vary, &object.variants, request_field) {
            Some(variant) => {
                object.slot.touch();
                Lookup::Hit { variant: Rc::clone(variant), state: variant.freshness.state(now_ms) }
            }
            None => Lookup::VaryMiss,
        }
    }

    /// The request's values of `vary` names, as a variant stores them; the
    /// `accept-encoding` value is the response's coding.
    pub fn vary_values<'r>(
        vary: &[Bytes],
        request_field: impl RequestField<'r>,
        content_encoding: Option<&[u8]>,
    ) -> Vec<Option<Bytes>> {
        vary.iter()
            .map(|name| match &name[..] {
                b"accept-encoding" => Some(coding::coding_key(content_encoding)),
                _ => request_field(name).map(|v| Bytes::copy_from_slice(trim(&v))),
            })
            .collect()
    }

    /// Stores `variant` under `key` with the response's `vary` names and
    /// surrogate keys, replacing the variant with the same request values.
    /// A different `Vary` than the stored one replaces every variant.
    /// Clears a hit-for-miss marker. Returns false when not stored: the
    /// object alone exceeds the budget, or its tags do not fit the index
    /// (a tagged object that a purge could not find must not be stored).
    pub fn store(&mut self, hash: u64, key: Bytes, vary: Vec<Bytes>, variant: Variant, tags: Vec<Bytes>) -> bool {
        self.hit_for_miss.remove(&hash);
        let collides = self.objects.get(&hash).is_some_and(|o| o.key != key);
        if collides {
            self.remove(hash);
        }
        let (slot, old_bytes, mut variants, old_tags) = match self.objects.remove(&hash) {
            Some(object) if object.vary == vary => (object.slot, object.bytes, object.variants, object.tags),
            Some(object) => {
                self.fifo.forget(&object.slot, object.bytes);
                (Slot::default(), 0, Vec::new(), object.tags)
            }
            None => (Slot::default(), 0, Vec::new(), Vec::new()),
        };
        self.tags.remove(hash, &old_tags);
        if !self.tags.insert(hash, &tags) {
            self.fifo.forget(&slot, old_bytes);
            return false;
        }
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
        self.objects.insert(hash, Object { key, vary, variants, tags, slot, bytes });
        let mut residents =
            Objects { objects: &mut self.objects, tags: &mut self.tags, evictions: &mut self.evictions };
        self.fifo.make_room(&mut residents);
        self.objects.contains_key(&hash)
    }

    /// A `304` (or a `200` to a HEAD whose validators agree) revalidated
    /// the variant stored for `vary_values`: its freshness becomes
    /// `freshness`, its header lines `headers` and its `Date` `date` (RFC
    /// 9111 §3.2, §4.3.4). Returns the refreshed variant, or None when none
    /// is stored any more.
    pub fn refresh(
        &mut self,
        hash: u64,
        key: &[u8],
        vary_values: &[Option<Bytes>],
        freshness: Freshness,
        headers: Option<Bytes>,
        date: Option<HttpDate>,
    ) -> Option<Rc<Variant>> {
        let object = self.objects.get_mut(&hash).filter(|o| o.key == key)?;
        let stored = object.variants.iter_mut().find(|v| v.vary_values == vary_values)?;
        let variant = Rc::make_mut(stored);
        variant.freshness = freshness;
        if let Some(headers) = headers {
            variant.headers = headers;
        }
        if let Some(date) = date {
            variant.date = date;
        }
        let variant = Rc::clone(stored);
        let bytes = Object::bytes_of(&object.key, &object.variants);
        self.fifo.resize(&object.slot, object.bytes, bytes);
        object.bytes = bytes;
        Some(variant)
    }

    /// Every stored variant of `key` that a request could select (all of
    /// them: the caller decides per variant), for a HEAD's update (§4.3.5).
    pub fn variants(&self, hash: u64, key: &[u8]) -> Vec<Rc<Variant>> {
        self.objects.get(&hash).filter(|o| o.key == key).map(|o| o.variants.clone()).unwrap_or_default()
    }

    /// Makes every variant of `key` stale as of `now_ms` (a HEAD whose
    /// validators disagree). Returns whether anything was stored.
    pub fn expire(&mut self, now_ms: u64, hash: u64) -> bool {
        let Some(object) = self.objects.get_mut(&hash) else {
            return false;
        };
        for variant in &mut object.variants {
            Rc::make_mut(variant).freshness.expire(now_ms);
        }
        true
    }

    /// Drops every variant of `key`. Returns whether anything was stored.
    pub fn remove(&mut self, hash: u64) -> bool {
        self.hit_for_miss.remove(&hash);
        match self.objects.remove(&hash) {
            Some(object) => {
                self.fifo.forget(&object.slot, object.bytes);
                self.tags.remove(hash, &object.tags);
                true
            }
            None => false,
        }
    }

    /// Purges every object carrying any of `tags` (exact match): dropped,
    /// or with `soft` made stale as of `now_ms` so that stale-while-
    /// revalidate and stale-if-error may still serve them while they
    /// revalidate (Fastly's soft purge). Returns how many objects.
    pub fn purge_tags(&mut self, tags: &[Bytes], soft: bool, now_ms: u64) -> u64 {
        let hashes = self.tags.objects(tags);
        let mut purged = 0;
        for hash in hashes {
            let done = if soft { self.expire(now_ms, hash) } else { self.remove(hash) };
            purged += u64::from(done);
        }
        purged
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

/// The variant that answers a request: every `Vary` value equal, except
/// `accept-encoding`, where the request must accept the variant's coding;
/// among several, the coding it weighs highest.
fn select<'v, 'r>(
    vary: &[Bytes],
    variants: &'v [Rc<Variant>],
    request_field: impl RequestField<'r>,
) -> Option<&'v Rc<Variant>> {
    let wanted: Vec<Option<Cow<'r, [u8]>>> = vary.iter().map(|name| request_field(name)).collect();
    let mut best: Option<(&Rc<Variant>, u16)> = None;
    for variant in variants.iter().filter(|v| v.vary_values.len() == wanted.len()) {
        let mut weight = 1000;
        let matches = vary.iter().zip(&variant.vary_values).zip(&wanted).all(|((name, have), want)| {
            if &name[..] == b"accept-encoding" {
                let coding = have.as_deref().unwrap_or(b"identity");
                weight = coding::weight(want.as_deref(), coding);
                return weight > 0;
            }
            have.as_deref() == want.as_deref().map(trim)
        });
        if matches && best.is_none_or(|(_, w)| weight > w) {
            best = Some((variant, weight));
        }
    }
    best.map(|(variant, _)| variant)
}

/// The elements of a comma-separated list field, trimmed, empty ones
/// skipped; commas inside quoted strings do not split.
pub(crate) fn split_list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
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

pub(crate) fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |i| i + 1);
    &bytes[start..end.max(start)]
}

fn unquote(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\"").and_then(|b| b.strip_suffix(b"\"")).unwrap_or(bytes)
}

/// An IMF-fixdate (RFC 9110 §5.6.7): always 29 bytes.
pub type HttpDate = [u8; 29];

/// `ms` (Unix milliseconds) as an IMF-fixdate.
pub fn http_date(ms: u64) -> HttpDate {
    let text = httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms));
    let mut date = [b' '; 29];
    date.copy_from_slice(&text.as_bytes()[..29]);
    date
}

/// An HTTP-date (IMF-fixdate and the two obsolete forms) in Unix milliseconds.
pub fn parse_http_date_ms(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(trim(value)).ok()?;
    let time = httpdate::parse_http_date(text).ok()?;
    time.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
