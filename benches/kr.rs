//! KR over clustered random descriptors (default 5000 queries + 5000
//! gallery, 512 dims): time and peak RSS, and the data + top-10 written
//! for `benches/kr_baseline.py`.
//! Run: `cargo bench --bench kr -- [nq ng dims out_dir]`.

use std::io::Write;
use std::time::Instant;

use lookalike::rerank::knn::rank_euclidean;
use lookalike::rerank::kreciprocal::{
    k_reciprocal, kr_single, query_max_d2, GalleryNeighbours, KrParams,
};
use ndarray::Array2;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// User + system CPU seconds of this process (clock ticks of 1/100 s).
fn cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(") ")?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let u: f64 = f.get(11)?.parse().ok()?;
            let k: f64 = f.get(12)?.parse().ok()?;
            Some((u + k) / 100.0)
        })
        .unwrap_or(0.0)
}

/// Points around `n / 10` class centres, L2-normalised.
fn clustered(rng: &mut StdRng, centres: &Array2<f32>, n: usize) -> Array2<f32> {
    let d = centres.ncols();
    let mut x = Array2::<f32>::zeros((n, d));
    for mut row in x.rows_mut() {
        let c = rng.random_range(0..centres.nrows());
        for (v, &m) in row.iter_mut().zip(centres.row(c)) {
            *v = m + 0.7 * rng.random_range(-1.0f32..1.0);
        }
        let nrm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.mapv_inplace(|v| v / nrm);
    }
    x
}

fn write_f32(path: &std::path::Path, x: &Array2<f32>) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for v in x.iter() {
        f.write_all(&v.to_le_bytes())?;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let arg = |i: usize, d: usize| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(d);
    let (nq, ng, d) = (arg(0, 5000), arg(1, 5000), arg(2, 512));
    let out = std::path::PathBuf::from(
        args.get(3)
            .cloned()
            .unwrap_or_else(|| "target/krbench".into()),
    );
    std::fs::create_dir_all(&out)?;
    let mut rng = StdRng::seed_from_u64(1);
    let centres = Array2::from_shape_fn(((nq + ng) / 10, d), |_| rng.random_range(-1.0f32..1.0));
    let q = clustered(&mut rng, &centres, nq);
    let g = clustered(&mut rng, &centres, ng);
    let rss0 = vm_hwm_kib();
    let p = KrParams::default();
    let (t, c0) = (Instant::now(), cpu_secs());
    let r = k_reciprocal(q.view(), g.view(), &p, 10)?;
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_secs() - c0;
    let rss1 = vm_hwm_kib();
    println!(
        "kr {nq}q x {ng}g x {d}d, k1 {} k2 {} lambda {}: {secs:.3} s wall, {cpu:.2} s CPU, {} threads, peak RSS {:.1} MiB (before KR {:.1} MiB)",
        p.k1,
        p.k2,
        p.lambda,
        rayon::current_num_threads(),
        rss1 as f64 / 1024.0,
        rss0 as f64 / 1024.0
    );
    write_f32(&out.join("q.f32"), &q)?;
    write_f32(&out.join("g.f32"), &g)?;
    let mut f = std::io::BufWriter::new(std::fs::File::create(out.join("rust_top10.u32"))?);
    for row in &r.ids {
        for &i in row {
            f.write_all(&(i as u32).to_le_bytes())?;
        }
    }
    std::fs::write(
        out.join("meta.json"),
        format!(
            "{{\"nq\": {nq}, \"ng\": {ng}, \"d\": {d}, \"k1\": {}, \"k2\": {}, \"lambda\": {}, \"rust_seconds\": {secs}, \"rust_cpu_seconds\": {cpu}, \"rust_peak_rss_mib\": {}}}\n",
            p.k1,
            p.k2,
            p.lambda,
            rss1 as f64 / 1024.0
        ),
    )?;
    online(&q, &g, &p)?;
    Ok(())
}

/// Single-query KR as the service runs it: latency with a Euclidean
/// shortlist of K, and top-10 agreement with the whole-gallery shortlist
/// (= the batch definition with that single query).
fn online(
    q: &Array2<f32>,
    g: &Array2<f32>,
    p: &KrParams,
) -> Result<(), Box<dyn std::error::Error>> {
    let t = Instant::now();
    let nb = GalleryNeighbours::build(g.view(), p.k1.max(p.k2))?;
    println!(
        "gallery neighbours (k {}): {:.3} s",
        nb.k(),
        t.elapsed().as_secs_f64()
    );
    let nq = q.nrows().min(50);
    let qs = q.slice(ndarray::s![..nq, ..]);
    let all: Vec<usize> = (0..g.nrows()).collect();
    let t = Instant::now();
    let full: Vec<Vec<usize>> = (0..nq)
        .map(|i| {
            kr_single(qs.row(i), g.view(), &nb, &all, None, p, 10)
                .map(|r| r.into_iter().map(|e| e.0).collect())
        })
        .collect::<Result<_, _>>()?;
    println!(
        "single query, whole gallery as shortlist: {:.1} ms/query",
        t.elapsed().as_secs_f64() * 1e3 / nq as f64
    );
    for k in [50usize, 100, 200, 500] {
        let sl = rank_euclidean(qs, g.view(), k)?;
        for exact_max in [false, true] {
            let t = Instant::now();
            let mut same = 0;
            let mut overlap = 0;
            for i in 0..nq {
                let mx = if exact_max {
                    Some(query_max_d2(qs.row(i), g.view(), &nb)?)
                } else {
                    None
                };
                let r: Vec<usize> = kr_single(qs.row(i), g.view(), &nb, &sl[i], mx, p, 10)?
                    .into_iter()
                    .map(|e| e.0)
                    .collect();
                same += usize::from(r == full[i]);
                overlap += r.iter().filter(|x| full[i].contains(x)).count();
            }
            println!(
                "shortlist {k} (query max over {}): {:.2} ms/query, identical top-10 {same}/{nq}, top-10 overlap {:.1}%",
                if exact_max { "gallery" } else { "shortlist" },
                t.elapsed().as_secs_f64() * 1e3 / nq as f64,
                100.0 * overlap as f64 / (10 * nq) as f64
            );
        }
    }
    Ok(())
}
