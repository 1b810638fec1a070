//! What requests a scenario sends: key popularity (Zipf), value sizes, the
//! read/write mix, client API keys, and the API dialect of the target.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde::{Deserialize, Serialize};

/// The HTTP API the target speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// `GET|PUT /v1/kv/{key}`.
    Shardgate,
    /// webdis in front of Redis: `GET /GET/{key}`, `PUT /SET/{key}` with the value as body.
    Webdis,
    /// A server answering any path (nginx `return 200`): the method follows the mix, the path is `/`.
    Static,
    /// A caching proxy in front of the origin simulator (shardgate's
    /// gateway mode, Varnish): `GET|PUT /item/key-{id}`; preloading GETs
    /// every key once, which fills the cache.
    Gateway,
}

/// Value sizes of writes, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ValueBytes {
    Fixed(usize),
    Uniform { min: usize, max: usize },
}

impl ValueBytes {
    pub fn max(&self) -> usize {
        match *self {
            ValueBytes::Fixed(n) => n,
            ValueBytes::Uniform { max, .. } => max,
        }
    }
}

/// The workload knobs of a scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Distinct keys, `key-0` to `key-{keys - 1}`.
    pub keys: u64,
    /// Zipf exponent of key popularity; 0 is uniform.
    #[serde(default)]
    pub zipf: f64,
    /// Fraction of requests that read (GET); the rest write (PUT).
    pub read_fraction: f64,
    pub value_bytes: ValueBytes,
    /// Distinct `X-API-Key` values, one per connection round-robin; 0 sends none.
    #[serde(default)]
    pub api_keys: u32,
    /// Keys written before the measured phase (the most popular first).
    #[serde(default)]
    pub preload: u64,
    /// Fraction of reads for a key no request named before (gateway: a
    /// miss that only the origin can answer), `/item/miss-{seed}-{conn}-{n}`.
    #[serde(default)]
    pub miss_fraction: f64,
}

impl Workload {
    pub fn validate(&self) -> Result<(), String> {
        if self.keys == 0 {
            return Err("workload.keys must be at least 1".to_string());
        }
        if !(0.0..=1.0).contains(&self.read_fraction) {
            return Err("workload.read_fraction must be within 0..=1".to_string());
        }
        if !(0.0..=1.0).contains(&self.miss_fraction) {
            return Err("workload.miss_fraction must be within 0..=1".to_string());
        }
        if !(self.zipf >= 0.0 && self.zipf.is_finite()) {
            return Err("workload.zipf must be 0 or more".to_string());
        }
        if let ValueBytes::Uniform { min, max } = self.value_bytes {
            if min > max {
                return Err("workload.value_bytes.min exceeds max".to_string());
            }
        }
        if self.value_bytes.max() > 64 << 20 {
            return Err("workload.value_bytes above 64 MiB".to_string());
        }
        if self.preload > self.keys {
            return Err("workload.preload exceeds workload.keys".to_string());
        }
        Ok(())
    }
}

/// Generates one connection's requests; deterministic for a given seed.
pub struct RequestGen {
    rng: SmallRng,
    zipf: Option<Zipf<f64>>,
    workload: Workload,
    api: Api,
    api_key: Option<String>,
    /// Value bytes; each write sends a prefix of it.
    value: Vec<u8>,
    connection: usize,
    seed: u64,
    /// Misses sent so far (each names a new key).
    misses: u64,
}

impl RequestGen {
    pub fn new(workload: &Workload, api: Api, seed: u64, connection: usize) -> RequestGen {
        let mut rng = SmallRng::seed_from_u64(seed ^ (connection as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let zipf = (workload.zipf > 0.0).then(|| Zipf::new(workload.keys as f64, workload.zipf).expect("validated"));
        let api_key = (workload.api_keys > 0).then(|| format!("client-{}", connection as u32 % workload.api_keys));
        let value = (0..workload.value_bytes.max()).map(|_| rng.random_range(b'a'..=b'z')).collect();
        RequestGen { rng, zipf, workload: workload.clone(), api, api_key, value, connection, seed, misses: 0 }
    }

    /// A key id, by popularity rank: id 0 is the most popular.
    pub fn key_id(&mut self) -> u64 {
        match &self.zipf {
            Some(zipf) => zipf.sample(&mut self.rng) as u64 - 1,
            None => self.rng.random_range(0..self.workload.keys),
        }
    }

    pub fn value_len(&mut self) -> usize {
        match self.workload.value_bytes {
            ValueBytes::Fixed(n) => n,
            ValueBytes::Uniform { min, max } => self.rng.random_range(min..=max),
        }
    }

    /// Appends the next request of the mix to `out`.
    pub fn next(&mut self, out: &mut Vec<u8>) {
        let id = self.key_id();
        if self.rng.random::<f64>() < self.workload.read_fraction {
            if self.workload.miss_fraction > 0.0 && self.rng.random::<f64>() < self.workload.miss_fraction {
                self.read_new(out);
                return;
            }
            self.read(id, out);
        } else {
            let length = self.value_len();
            self.write(id, length, out);
        }
    }

    /// Appends a GET of key `id`. Written piece by piece: the generator
    /// builds every request, and an allocation each would cap its rate.
    pub fn read(&self, id: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(b"GET ");
        self.target(id, b"/GET/", out);
        out.extend_from_slice(b" HTTP/1.1\r\nHost: bench\r\n");
        self.finish_head(out);
    }

    /// Appends a GET of a key never asked for before.
    fn read_new(&mut self, out: &mut Vec<u8>) {
        self.misses += 1;
        // The seed keeps runs against one server apart.
        out.extend_from_slice(b"GET /item/miss-");
        out.extend_from_slice(itoa::Buffer::new().format(self.seed).as_bytes());
        out.push(b'-');
        out.extend_from_slice(itoa::Buffer::new().format(self.connection).as_bytes());
        out.push(b'-');
        out.extend_from_slice(itoa::Buffer::new().format(self.misses).as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nHost: bench\r\n");
        self.finish_head(out);
    }

    /// Appends a PUT of a `length`-byte value to key `id`.
    pub fn write(&self, id: u64, length: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(b"PUT ");
        self.target(id, b"/SET/", out);
        out.extend_from_slice(b" HTTP/1.1\r\nHost: bench\r\nContent-Length: ");
        out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
        out.extend_from_slice(b"\r\n");
        self.finish_head(out);
        out.extend_from_slice(&self.value[..length]);
    }

    /// Appends the request-target of key `id`; `webdis_command` is its
    /// `/GET/` or `/SET/` prefix.
    fn target(&self, id: u64, webdis_command: &[u8], out: &mut Vec<u8>) {
        let prefix: &[u8] = match self.api {
            Api::Shardgate => b"/v1/kv/key-",
            Api::Gateway => b"/item/key-",
            Api::Webdis => webdis_command,
            Api::Static => {
                out.push(b'/');
                return;
            }
        };
        out.extend_from_slice(prefix);
        if self.api == Api::Webdis {
            out.extend_from_slice(b"key-");
        }
        out.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
    }

    fn finish_head(&self, out: &mut Vec<u8>) {
        if let Some(key) = &self.api_key {
            out.extend_from_slice(b"X-API-Key: ");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(zipf: f64, read_fraction: f64, value_bytes: ValueBytes) -> Workload {
        Workload { keys: 1000, zipf, read_fraction, value_bytes, api_keys: 3, preload: 0, miss_fraction: 0.0 }
    }

    #[test]
    fn zipf_ranks_follow_the_power_law() {
        let mut generator = RequestGen::new(&workload(0.99, 1.0, ValueBytes::Fixed(8)), Api::Shardgate, 7, 0);
        let mut counts = vec![0u32; 1000];
        for _ in 0..200_000 {
            counts[generator.key_id() as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c <= counts[0]), "rank 0 is the most popular");
        // f(1)/f(2) = 2^s and f(1)/f(10) = 10^s for Zipf(s).
        let ratio_2 = f64::from(counts[0]) / f64::from(counts[1]);
        let ratio_10 = f64::from(counts[0]) / f64::from(counts[9]);
        assert!((ratio_2 - 2f64.powf(0.99)).abs() < 0.15, "{ratio_2}");
        assert!((ratio_10 - 10f64.powf(0.99)).abs() < 1.5, "{ratio_10}");
        // Harmonic mass of rank 0 for s≈1 over 1000 keys is about 13%.
        let share = f64::from(counts[0]) / 200_000.0;
        assert!((0.11..0.16).contains(&share), "{share}");
    }

    #[test]
    fn zero_exponent_is_uniform() {
        let mut generator = RequestGen::new(&workload(0.0, 1.0, ValueBytes::Fixed(8)), Api::Shardgate, 7, 0);
        let mut counts = vec![0u32; 1000];
        for _ in 0..200_000 {
            counts[generator.key_id() as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 120 && *max < 290, "{min}..{max}");
    }

    #[test]
    fn value_sizes_and_mix() {
        let sizes = ValueBytes::Uniform { min: 64, max: 1024 };
        let mut generator = RequestGen::new(&workload(0.0, 0.9, sizes), Api::Shardgate, 1, 0);
        let lengths: Vec<usize> = (0..10_000).map(|_| generator.value_len()).collect();
        assert!(lengths.iter().all(|l| (64..=1024).contains(l)));
        let mean = lengths.iter().sum::<usize>() as f64 / lengths.len() as f64;
        assert!((mean - 544.0).abs() < 15.0, "{mean}");
        let mut reads = 0;
        for _ in 0..10_000 {
            let mut out = Vec::new();
            generator.next(&mut out);
            reads += usize::from(out.starts_with(b"GET "));
        }
        assert!((8_800..9_200).contains(&reads), "{reads}");
    }

    #[test]
    fn requests_are_well_formed_per_api() {
        let w = workload(0.0, 1.0, ValueBytes::Fixed(5));
        let mut out = Vec::new();
        RequestGen::new(&w, Api::Shardgate, 1, 4).write(42, 5, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(
            "PUT /v1/kv/key-42 HTTP/1.1\r\nHost: bench\r\nContent-Length: 5\r\nX-API-Key: client-1\r\n\r\n"
        ));
        assert_eq!(text.len(), text.find("\r\n\r\n").unwrap() + 4 + 5);
        let mut out = Vec::new();
        RequestGen::new(&w, Api::Webdis, 1, 0).read(7, &mut out);
        assert!(out.starts_with(b"GET /GET/key-7 HTTP/1.1\r\n"));
        let mut out = Vec::new();
        RequestGen::new(&w, Api::Static, 1, 0).read(7, &mut out);
        assert!(out.starts_with(b"GET / HTTP/1.1\r\n"));
    }

    #[test]
    fn bad_workloads_are_refused() {
        let mut w = workload(0.99, 0.9, ValueBytes::Fixed(8));
        assert!(w.validate().is_ok());
        w.read_fraction = 1.5;
        assert!(w.validate().is_err());
        let mut w = workload(0.99, 0.9, ValueBytes::Uniform { min: 10, max: 5 });
        assert!(w.validate().is_err());
        w.value_bytes = ValueBytes::Fixed(8);
        w.preload = 5000;
        assert!(w.validate().is_err());
    }
}
