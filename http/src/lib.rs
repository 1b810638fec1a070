//! shardgate's HTTP/1.1: pure code on byte slices, no runtime, no sockets.
//!
//! # Layout
//! - [`body`]: a body arriving over time, read by readers on any core
//!   (responses streamed while stored, request bodies streamed to the
//!   origin): std's mutex and wakers, no runtime.
//! - [`codec`]: the request decoder (RFC 9112 framing, limits, chunked
//!   bodies, `Expect: 100-continue`).
//! - [`response`]: the [`response::Response`] value and its encoder, the
//!   cached `Date`, problem details (RFC 9457), the RateLimit fields.
//! - [`origin`]: the decoder of an origin's response (gateway mode).
//! - [`proxy`]: a client request in owned form for the gateway, and its
//!   encoding for the origin.
//! - [`fields`]: header-field and request-target helpers both paths share.
//!
//! **API Boundary:** the fuzz targets depend on this crate alone.
//! **Architecture Invariant:** nothing here reads the clock, a socket or a
//! file; `response::DateCache` is refreshed by its caller with the time.

pub mod body;
pub mod codec;
pub mod fields;
pub mod origin;
pub mod proxy;
pub mod response;
