//! Header field helpers shared by the request and response paths.

use bytes::Bytes;

/// Hop-by-hop fields (RFC 9110 §7.6.1) and the framing fields the gateway
/// sets itself: never forwarded in either direction.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 9] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"proxy-authorization",
    ];
    NAMES.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// Every `Connection` line's options, comma-joined, for [`named_by_connection`].
pub fn connection_options(headers: &[httparse::Header<'_>]) -> Vec<u8> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.iter().copied().chain(*b","))
        .collect()
}

/// Whether `name` is listed in a `Connection` field value (also hop-by-hop).
pub fn named_by_connection(connection: &[u8], name: &[u8]) -> bool {
    connection.split(|&b| b == b',').any(|token| token.trim_ascii().eq_ignore_ascii_case(name))
}

/// Whether a `Host` value is an authority as RFC 9110 §7.2 and RFC 3986
/// §3.2.2 define it: a reg-name (unreserved characters, percent-encodings
/// and sub-delims), an IPv4 address (a reg-name's subset) or a bracketed IP
/// literal, then an optional `:port` of digits. Empty is valid (a request
/// whose target has no authority). No userinfo, path, query or spaces.
pub fn is_valid_host(value: &[u8]) -> bool {
    let (host, port) = match value.first() {
        Some(b'[') => match value.iter().position(|&b| b == b']') {
            Some(close) => (&value[..=close], &value[close + 1..]),
            None => return false,
        },
        _ => match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &b""[..]),
        },
    };
    let port_ok = port.is_empty() || (port[0] == b':' && port[1..].iter().all(u8::is_ascii_digit));
    port_ok && if host.first() == Some(&b'[') { is_ip_literal(host) } else { is_reg_name(host) }
}

/// The bytes a reg-name may hold as they are: unreserved and sub-delims
/// (RFC 3986 §3.2.2). A table, because this runs on every request's `Host`.
const REG_NAME_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
            );
        b += 1;
    }
    table
};

fn is_reg_name(host: &[u8]) -> bool {
    let mut i = 0;
    while i < host.len() {
        match host[i] {
            b'%' => {
                let hex = host.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
                continue;
            }
            b if REG_NAME_BYTES[b as usize] => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// `[` IPv6address `]` or `[v` HEXDIG+ `.` (unreserved / sub-delims / `:`)+ `]`.
fn is_ip_literal(host: &[u8]) -> bool {
    let inner = &host[1..host.len() - 1];
    if let Some(future) = inner.strip_prefix(b"v").or_else(|| inner.strip_prefix(b"V")) {
        let Some(dot) = future.iter().position(|&b| b == b'.') else {
            return false;
        };
        let (version, rest) = (&future[..dot], &future[dot + 1..]);
        let allowed = |b: &u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:".contains(b);
        return !version.is_empty()
            && version.iter().all(u8::is_ascii_hexdigit)
            && !rest.is_empty()
            && rest.iter().all(allowed);
    }
    std::str::from_utf8(inner).is_ok_and(|text| text.parse::<std::net::Ipv6Addr>().is_ok())
}

/// The value of a field in `\r\nName: value` lines.
pub fn field_of<'a>(headers: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    headers.split(|&b| b == b'\n').find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon].eq_ignore_ascii_case(name).then(|| line[colon + 1..].trim_ascii())
    })
}

/// Every line of a field in `\r\nName: value` lines, joined by `separator`.
pub fn field_joined(headers: &[u8], name: &[u8], separator: &[u8]) -> Option<Vec<u8>> {
    let mut joined: Option<Vec<u8>> = None;
    for line in headers.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        if !line[..colon].eq_ignore_ascii_case(name) {
            continue;
        }
        let value = line[colon + 1..].trim_ascii();
        match &mut joined {
            None => joined = Some(value.to_vec()),
            Some(all) => {
                all.extend_from_slice(separator);
                all.extend_from_slice(value);
            }
        }
    }
    joined
}

/// `headers` (`\r\nName: value` lines) without the fields named in
/// `names` (lower-case); the same buffer when none is there.
pub fn without_fields(headers: &Bytes, names: &[&[u8]]) -> Bytes {
    let named = |line: &[u8]| {
        let colon = line.iter().position(|&b| b == b':');
        colon.is_some_and(|c| names.iter().any(|n| line[..c].trim_ascii().eq_ignore_ascii_case(n)))
    };
    if !headers.split(|&b| b == b'\n').any(named) {
        return headers.clone();
    }
    let mut out = Vec::with_capacity(headers.len());
    for line in headers.split(|&b| b == b'\n').filter(|l| !l.trim_ascii().is_empty()) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !named(line) {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(line);
        }
    }
    Bytes::from(out)
}

/// `stored` with every field `update` has replaced by `update`'s lines
/// (both as `\r\nName: value` lines).
pub fn merge_fields(stored: &[u8], update: &[u8]) -> Bytes {
    let names = |lines: &[u8]| -> Vec<Vec<u8>> {
        lines
            .split(|&b| b == b'\n')
            .filter_map(|l| l.iter().position(|&b| b == b':').map(|c| l[..c].trim_ascii().to_ascii_lowercase()))
            .collect()
    };
    let replaced = names(update);
    let mut out = Vec::with_capacity(stored.len() + update.len());
    for line in stored.split(|&b| b == b'\n').filter(|l| !l.trim_ascii().is_empty()) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let name = line.iter().position(|&b| b == b':').map(|c| line[..c].to_ascii_lowercase());
        if name.is_some_and(|n| replaced.contains(&n)) {
            continue;
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(line);
    }
    out.extend_from_slice(update);
    Bytes::from(out)
}

/// Appends `Name: value\r\n`.
pub fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Splits a request-target into path and query; absolute-form targets
/// (`http://host/path`) are reduced to their path.
pub fn split_target(target: &[u8]) -> (&[u8], &[u8]) {
    let path = origin_form(target);
    match path.iter().position(|&b| b == b'?') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (path, b""),
    }
}

/// An absolute-form target (`http://host/path?q`) reduced to origin form
/// (`/path?q`); any other target as it is.
pub fn origin_form(target: &[u8]) -> &[u8] {
    for scheme in [&b"http://"[..], b"https://"] {
        if let Some(rest) = target.strip_prefix(scheme) {
            return rest.iter().position(|&b| b == b'/').map_or(b"/", |i| &rest[i..]);
        }
    }
    target
}

#[cfg(test)]
mod tests;
