//! HTTP/1.1, sans-IO: [`codec`] turns bytes into requests, [`response`] turns
//! responses into bytes. Neither touches a socket or the clock.

pub mod codec;
pub mod response;
