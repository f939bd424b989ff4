//! Writing tokens' keys and values into the cache, f32 to f16, in the layouts of
//! [`KvGeometry`]: value rows as they are, keys as rows or, for the fast arithmetic, one value
//! per dimension row of the block ([`KeyLayout::Columns`]).
//!
//! Both conversions round to nearest even, like ggml's f32 -> f16; F16C does eight values per
//! instruction where the scalar conversion is software. A step's writes are split over the
//! pool ([`store_step`]): a transposed key touches 32 cache lines per head, most of them not
//! in cache, and written by one thread while the other waited they cost 1.2 ms of a 24 ms
//! 32-sequence decode step.

use std::marker::PhantomData;

use half::f16;

use super::{AttnQuery, KeyLayout, KvGeometry};
use crate::cpu::CpuLevel;
use crate::pool::{split_range, PartsPtr, ThreadPool};

/// Writes one token's key and value rows (`kv_dim` values each) at position `pos` of the
/// sequence whose block table is `table`, into one layer's cache storage: one token of
/// [`store_step`], the tests' reference for it.
///
/// Panics if the rows are not `kv_dim` long or the position's block is outside the storage.
#[cfg(test)]
fn store_token(
    geo: &KvGeometry,
    k_layer: &mut [f16],
    v_layer: &mut [f16],
    table: &[u32],
    pos: usize,
    key: &[f32],
    value: &[f32],
) {
    let layer = Layer::new(geo, k_layer, v_layer);
    // SAFETY: `layer` holds the only borrow of the storage.
    unsafe { layer.store(CpuLevel::detect(), geo, table, pos, key, value) }
}

/// Below this many key values a step's writes stay on the calling thread (a dispatch costs
/// more than converting them).
const PARALLEL_MIN_VALUES: usize = 4096;

/// Every query token's part of a step's cache writes, the tokens split over `pool`: first
/// `prepare(t, q_row, k_row)` on token `t`'s query and key rows (the caller's RoPE, in place),
/// then its key and value rows stored at its own position (`n_ctx - 1`). `q`, `k` and `v`
/// hold one row per query (`n_heads * head_dim`, `kv_dim`, `kv_dim`). `slots` is scratch.
///
/// Panics if two queries would write the same cache slot (in parallel, that would be a data
/// race), a position's block is outside the storage, or a shape does not match.
#[allow(clippy::too_many_arguments)]
pub fn store_step(
    pool: &ThreadPool,
    geo: &KvGeometry,
    queries: &[AttnQuery<'_>],
    q: &mut [f32],
    k: &mut [f32],
    v: &[f32],
    k_layer: &mut [f16],
    v_layer: &mut [f16],
    slots: &mut Vec<usize>,
    prepare: impl Fn(usize, &mut [f32], &mut [f32]) + Sync,
) {
    let (n, qd, kvd, bs) = (
        queries.len(),
        geo.n_heads * geo.head_dim,
        geo.kv_dim(),
        geo.block_size,
    );
    assert!(
        q.len() == n * qd && k.len() == n * kvd && v.len() == n * kvd,
        "store_step: rows do not match the queries"
    );
    slots.clear();
    for t in queries {
        let pos = t
            .n_ctx
            .checked_sub(1)
            .expect("store_step: a query with no position");
        slots.push(t.block_table[pos / bs] as usize * bs + pos % bs);
    }
    slots.sort_unstable();
    assert!(
        slots.windows(2).all(|w| w[0] != w[1]),
        "store_step: two tokens write the same cache slot"
    );
    let layer = Layer::new(geo, k_layer, v_layer);
    let (qp, kp) = (PartsPtr(q.as_mut_ptr()), PartsPtr(k.as_mut_ptr()));
    let level = CpuLevel::detect();
    let job = |part: usize, parts: usize| {
        let mine = split_range(n, parts, part);
        for t in mine.clone() {
            if t + 2 < mine.end {
                let ahead = &queries[t + 2];
                layer.prefetch(geo, ahead.block_table, ahead.n_ctx - 1);
            }
            // SAFETY: each part gets its own tokens' rows of `q` and `k`, and `run` joins the
            // parts before the borrows end.
            let (q_row, k_row) = unsafe {
                (
                    std::slice::from_raw_parts_mut(qp.get().add(t * qd), qd),
                    std::slice::from_raw_parts_mut(kp.get().add(t * kvd), kvd),
                )
            };
            prepare(t, q_row, k_row);
            // SAFETY: the slots are distinct (checked above), so no two tokens write the same
            // cache values.
            unsafe {
                layer.store(
                    level,
                    geo,
                    queries[t].block_table,
                    queries[t].n_ctx - 1,
                    k_row,
                    &v[t * kvd..(t + 1) * kvd],
                )
            };
        }
    };
    if n * kvd < PARALLEL_MIN_VALUES || pool.n_threads() == 1 {
        job(0, 1);
    } else {
        pool.run(job);
    }
}

/// One layer's key and value storage, written through raw pointers so that threads can
/// store distinct tokens at once.
struct Layer<'a> {
    k: PartsPtr<f16>,
    v: PartsPtr<f16>,
    len: usize,
    _storage: PhantomData<&'a mut [f16]>,
}

impl<'a> Layer<'a> {
    fn new(geo: &KvGeometry, k: &'a mut [f16], v: &'a mut [f16]) -> Layer<'a> {
        assert!(
            k.len() == v.len() && k.len().is_multiple_of(geo.block_elems()),
            "kv store: the layer's keys and values differ in size"
        );
        Layer {
            k: PartsPtr(k.as_mut_ptr()),
            v: PartsPtr(v.as_mut_ptr()),
            len: k.len(),
            _storage: PhantomData,
        }
    }

    /// Asks for the cache lines a token's rows will be stored in (a transposed key's are
    /// spread over its head's piece of the block, most of them not in cache).
    fn prefetch(&self, geo: &KvGeometry, table: &[u32], pos: usize) {
        let (hd, bs) = (geo.head_dim, geo.block_size);
        if (table[pos / bs] as usize + 1) * geo.block_elems() > self.len {
            return;
        }
        for h in 0..geo.n_kv_heads {
            let (k, v) = (
                geo.key_offset(table, pos, h, 0),
                geo.head_offset(table, pos, h),
            );
            let k_end = match geo.keys {
                KeyLayout::Rows => k + hd,
                KeyLayout::Columns => k + (hd - 1) * bs + 1,
            };
            // 32 f16 values to a cache line.
            for off in (k..k_end).step_by(32) {
                prefetch_line(self.k.get().wrapping_add(off));
            }
            for off in (v..v + hd).step_by(32) {
                prefetch_line(self.v.get().wrapping_add(off));
            }
        }
    }

    /// Stores one token's key and value rows at its position, in the layouts of `geo`, at
    /// `level` (which the CPU must support).
    ///
    /// # Safety
    /// No other thread may access this token's slot meanwhile.
    unsafe fn store(
        &self,
        level: CpuLevel,
        geo: &KvGeometry,
        table: &[u32],
        pos: usize,
        key: &[f32],
        value: &[f32],
    ) {
        // SAFETY: the assertions below keep every offset inside `block`, which lies inside the storage; no other thread touches this token's slot (the caller's contract); `level` is supported (the caller's contract).
        unsafe {
            let (hd, bs) = (geo.head_dim, geo.block_size);
            assert!(
                key.len() == geo.kv_dim() && value.len() == key.len(),
                "kv store: rows of {} values",
                geo.kv_dim()
            );
            let block = table[pos / bs] as usize;
            assert!(
                (block + 1) * geo.block_elems() <= self.len,
                "kv store: block {block} outside the storage"
            );
            for (h, (k, v)) in key.chunks_exact(hd).zip(value.chunks_exact(hd)).enumerate() {
                // Every offset below lies in `block` (checked above).
                to_f16(
                    level,
                    v,
                    self.v.get().add(geo.head_offset(table, pos, h)),
                    1,
                );
                let stride = match geo.keys {
                    KeyLayout::Rows => 1,
                    KeyLayout::Columns => bs,
                };
                to_f16(
                    level,
                    k,
                    self.k.get().add(geo.key_offset(table, pos, h, 0)),
                    stride,
                );
            }
        }
    }
}

/// Asks for the cache line holding `p` (a hint: any address is fine).
fn prefetch_line(p: *const f16) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, whatever the address; SSE is part of x86_64.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    let _ = p;
}

/// `dst[i * stride] = src[i]` rounded to f16.
///
/// # Safety
/// `dst` must be valid for writes at those offsets; the CPU must support `level` (F16C
/// from [`CpuLevel::Avx2`] up).
unsafe fn to_f16(level: CpuLevel, src: &[f32], dst: *mut f16, stride: usize) {
    // SAFETY: the caller guarantees that `dst` is valid for writes at `i * stride` for every `i < src.len()` and that the CPU supports `level` (F16C from Avx2 up).
    unsafe {
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if level >= CpuLevel::Avx2 {
            done = x86::to_f16(src, dst, stride);
        }
        let _ = level;
        for (i, &s) in src.iter().enumerate().skip(done) {
            *dst.add(i * stride) = f16::from_f32(s);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    /// Converts whole groups of eight of `src` to `dst[i * stride]`; returns how many.
    ///
    /// # Safety
    /// F16C must be available and `dst` valid for writes at those offsets.
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn to_f16(src: &[f32], dst: *mut f16, stride: usize) -> usize {
        // SAFETY: the caller guarantees that `dst` is valid for writes at `i * stride` for every `i < src.len()` and that the CPU supports `level` (F16C from Avx2 up).
        unsafe {
            let n = src.len() / 8 * 8;
            let d = dst.cast::<u16>();
            for i in (0..n).step_by(8) {
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(
                    src.as_ptr().add(i),
                ));
                if stride == 1 {
                    _mm_storeu_si128(d.add(i).cast(), h);
                } else {
                    let mut lanes = [0u16; 8];
                    _mm_storeu_si128(lanes.as_mut_ptr().cast(), h);
                    for (j, &x) in lanes.iter().enumerate() {
                        *d.add((i + j) * stride) = x;
                    }
                }
            }
            n
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::ThreadPool;

    #[test]
    fn conversions_round_like_half_and_land_where_the_geometry_says() {
        // Ties, subnormals, overflow, NaN and plain values; 12-value heads leave the SIMD
        // path a tail of four for the scalar one.
        for (head_dim, n_kv) in [(48usize, 2usize), (12, 3)] {
            let vals: Vec<f32> = (0..head_dim * n_kv)
                .map(|i| match i % 6 {
                    0 => 1.0 + (i as f32) * 2f32.powi(-11),
                    1 => 6.0e-8 * i as f32,
                    2 => 70000.0,
                    3 => f32::NAN,
                    _ => (i as f32 * 0.37).sin() * 3.0,
                })
                .collect();
            let value: Vec<f32> = vals.iter().map(|x| -x).collect();
            for keys in [KeyLayout::Rows, KeyLayout::Columns] {
                let geo = KvGeometry {
                    block_size: 16,
                    n_heads: 2 * n_kv,
                    n_kv_heads: n_kv,
                    head_dim,
                    keys,
                };
                let table = [2u32, 0];
                for level in CpuLevel::supported() {
                    let mut k = vec![f16::from_f32(9.0); 3 * geo.block_elems()];
                    let mut v = k.clone();
                    // SAFETY: `layer` holds the only borrows of k and v for this call.
                    unsafe {
                        Layer::new(&geo, &mut k, &mut v)
                            .store(level, &geo, &table, 21, &vals, &value)
                    };
                    let mut k_written = vec![false; k.len()];
                    let mut v_written = k_written.clone();
                    for h in 0..n_kv {
                        for d in 0..head_dim {
                            let (ko, vo) = (
                                geo.key_offset(&table, 21, h, d),
                                geo.head_offset(&table, 21, h) + d,
                            );
                            assert_eq!(
                                k[ko].to_bits(),
                                f16::from_f32(vals[h * head_dim + d]).to_bits(),
                                "{keys:?} {level} key {h} {d}"
                            );
                            assert_eq!(
                                v[vo].to_bits(),
                                f16::from_f32(value[h * head_dim + d]).to_bits(),
                                "{keys:?} {level} value {h} {d}"
                            );
                            (k_written[ko], v_written[vo]) = (true, true);
                        }
                    }
                    let untouched = |c: &[f16], w: &[bool]| {
                        c.iter().zip(w).all(|(x, &w)| w || x.to_f32() == 9.0)
                    };
                    assert!(
                        untouched(&k, &k_written) && untouched(&v, &v_written),
                        "{keys:?} {level}: wrote outside the token's slots"
                    );
                }
            }
        }
    }

    fn decode_queries(tables: &[Vec<u32>], n_ctx: usize) -> Vec<AttnQuery<'_>> {
        tables
            .iter()
            .map(|t| AttnQuery {
                n_ctx,
                block_table: t,
                prompt: false,
            })
            .collect()
    }

    #[test]
    fn store_step_prepares_and_stores_every_token_like_store_token() {
        let geo = KvGeometry {
            block_size: 16,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 64,
            keys: KeyLayout::Columns,
        };
        let tables: Vec<Vec<u32>> = (0..40u32).map(|s| vec![2 * s, 2 * s + 1]).collect();
        let queries = decode_queries(&tables, 20);
        let (qd, kvd) = (4 * 64, 2 * 64);
        let mut q: Vec<f32> = (0..40 * qd).map(|i| (i as f32 * 0.01).sin()).collect();
        let mut k: Vec<f32> = (0..40 * kvd).map(|i| (i as f32 * 0.02).cos()).collect();
        let v: Vec<f32> = (0..40 * kvd).map(|i| i as f32 * 0.001).collect();
        let n = 80 * geo.block_elems();
        let (mut kl, mut vl) = (vec![f16::ZERO; n], vec![f16::ZERO; n]);
        let (q0, k0) = (q.clone(), k.clone());
        store_step(
            &ThreadPool::new(2),
            &geo,
            &queries,
            &mut q,
            &mut k,
            &v,
            &mut kl,
            &mut vl,
            &mut Vec::new(),
            |t, q, k| {
                q.iter_mut().for_each(|x| *x += t as f32);
                k.iter_mut().for_each(|x| *x *= 2.0);
            },
        );
        let (mut kw, mut vw) = (vec![f16::ZERO; n], vec![f16::ZERO; n]);
        for (t, query) in queries.iter().enumerate() {
            assert!(
                q[t * qd..(t + 1) * qd]
                    .iter()
                    .zip(&q0[t * qd..])
                    .all(|(a, b)| *a == b + t as f32),
                "token {t}: query not prepared"
            );
            let k2: Vec<f32> = k0[t * kvd..(t + 1) * kvd].iter().map(|x| x * 2.0).collect();
            assert_eq!(
                &k[t * kvd..(t + 1) * kvd],
                &k2[..],
                "token {t}: key not prepared"
            );
            store_token(
                &geo,
                &mut kw,
                &mut vw,
                query.block_table,
                19,
                &k2,
                &v[t * kvd..(t + 1) * kvd],
            );
        }
        assert!(kl
            .iter()
            .zip(&kw)
            .chain(vl.iter().zip(&vw))
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    #[test]
    #[should_panic(expected = "same cache slot")]
    fn store_step_refuses_two_tokens_in_one_slot() {
        let geo = KvGeometry {
            block_size: 16,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 16,
            keys: KeyLayout::Rows,
        };
        // Two sequences whose tables share block 3 at the written position.
        let tables = vec![vec![3u32], vec![3u32]];
        let queries = decode_queries(&tables, 5);
        let (mut q, mut k, v) = (vec![0.0; 2 * 32], vec![0.0; 2 * 16], vec![0.0; 2 * 16]);
        let (mut kl, mut vl) = (
            vec![f16::ZERO; 4 * geo.block_elems()],
            vec![f16::ZERO; 4 * geo.block_elems()],
        );
        store_step(
            &ThreadPool::new(2),
            &geo,
            &queries,
            &mut q,
            &mut k,
            &v,
            &mut kl,
            &mut vl,
            &mut Vec::new(),
            |_, _, _| {},
        );
    }
}
