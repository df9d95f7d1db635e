//! Folding an inference BatchNorm into the preceding convolution / linear layer:
//! W' = W * s, b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps), per output channel.
use crate::model::tensor::HostTensor;

pub struct BnParams<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub mean: &'a [f32],
    pub var: &'a [f32],
    pub eps: f32,
}

/// Rewrites `weight` ([out, ...]) and `bias` ([out]) in place.
pub fn fold_into(weight: &mut HostTensor, bias: &mut [f32], bn: &BnParams<'_>) {
    let per = weight.numel() / bias.len().max(1);
    for (o, (b, ws)) in bias
        .iter_mut()
        .zip(weight.data.chunks_mut(per.max(1)))
        .enumerate()
    {
        let s = bn.gamma[o] / (bn.var[o] + bn.eps).sqrt();
        ws.iter_mut().for_each(|w| *w *= s);
        *b = (*b - bn.mean[o]) * s + bn.beta[o];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct NCHW convolution, stride 1, no padding, groups 1 (reference for the test).
    fn conv(x: &[f32], c: usize, h: usize, w: &HostTensor, b: &[f32]) -> Vec<f32> {
        let (o, k) = (w.shape[0], w.shape[2]);
        let oh = h - k + 1;
        let mut y = vec![0.0; o * oh * oh];
        for oc in 0..o {
            for i in 0..oh {
                for j in 0..oh {
                    let mut acc = b[oc];
                    for ic in 0..c {
                        for ki in 0..k {
                            for kj in 0..k {
                                acc += x[ic * h * h + (i + ki) * h + j + kj]
                                    * w.data[((oc * c + ic) * k + ki) * k + kj];
                            }
                        }
                    }
                    y[(oc * oh + i) * oh + j] = acc;
                }
            }
        }
        y
    }

    #[test]
    fn folded_conv_equals_conv_then_batchnorm() {
        let (c, h, o, k) = (3, 6, 4, 3);
        let lcg = |seed: u32, n: usize| -> Vec<f32> {
            let mut s = seed;
            (0..n)
                .map(|_| {
                    s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                })
                .collect()
        };
        let x = lcg(1, c * h * h);
        let w = HostTensor::new(vec![o, c, k, k], lcg(2, o * c * k * k)).unwrap();
        let b = lcg(3, o);
        let gamma = lcg(4, o);
        let beta = lcg(5, o);
        let mean = lcg(6, o);
        let var: Vec<f32> = lcg(7, o).iter().map(|v| v + 0.6).collect();
        let eps = 1e-3;
        let y = conv(&x, c, h, &w, &b);
        let per = y.len() / o;
        let reference: Vec<f32> = y
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let oc = i / per;
                (v - mean[oc]) / (var[oc] + eps).sqrt() * gamma[oc] + beta[oc]
            })
            .collect();
        let (mut wf, mut bf) = (w.clone(), b.clone());
        let bn = BnParams {
            gamma: &gamma,
            beta: &beta,
            mean: &mean,
            var: &var,
            eps,
        };
        fold_into(&mut wf, &mut bf, &bn);
        let folded = conv(&x, c, h, &wf, &bf);
        for (a, r) in folded.iter().zip(&reference) {
            assert!((a - r).abs() < 1e-5, "{a} vs {r}");
        }
    }
}
