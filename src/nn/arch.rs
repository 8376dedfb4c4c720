//! Architectures: the torchvision layer sequences of AlexNet, VGG-16 and ResNet-18 and their small
//! variants, with torchvision's initialisation. See the module docs of [`crate::nn`] for how the
//! small variants are scaled.

use crate::backend::Pool2dParams;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::Tensor;

use super::layers::{BasicBlock, Conv2d, Layer, LayerKind, Linear, Param};

/// Every model name `Model::build` knows.
pub const KNOWN_MODELS: &[&str] = &[
    "alexnet",
    "vgg16",
    "resnet18",
    "small-alexnet",
    "small-vgg16",
    "small-resnet18",
];

/// Largest `width` (channels of the first conv) a model is built with: the small models at
/// width 512 already hold hundreds of millions of parameters.
pub const MAX_WIDTH: usize = 512;
/// Most classes a model is built with (ImageNet-21k has 21,841).
pub const MAX_CLASSES: usize = 100_000;
/// Largest input side (height or width) in pixels.
pub const MAX_SIDE: usize = 4096;
/// Most parameters a model is built with (2 GiB of f32; VGG-16 has 138 million).
pub const MAX_PARAMS: usize = 1 << 29;

/// Default `width` of a model: the channel count of its first conv layer.
pub fn default_width(name: &str) -> usize {
    match name {
        "small-alexnet" | "small-vgg16" | "small-resnet18" => 8,
        _ => 64,
    }
}

/// How torchvision initialises each architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InitPolicy {
    /// torch defaults (AlexNet has no custom init): weights and biases U(-1/sqrt(fan_in), +).
    TorchDefault,
    /// VGG: conv kaiming_normal(fan_out, relu), bias 0; linear N(0, 0.01), bias 0.
    Vgg,
    /// ResNet: conv kaiming_normal(fan_out, relu); BN (1, 0); fc torch default.
    ResNet,
}

/// The layer list of a model, where phi sits (phi = output of `layers[phi_at - 1]`), and the
/// named conv taps.
pub(crate) struct Arch {
    pub layers: Vec<Layer>,
    pub phi_at: usize,
}

fn conv(name: &str, cin: usize, cout: usize, k: usize, s: usize, p: usize) -> Layer {
    Layer::new(
        name,
        LayerKind::Conv2d(Conv2d::new(name, cin, cout, k, s, p, true)),
    )
}
fn relu(name: &str) -> Layer {
    Layer::new(name, LayerKind::ReLU)
}
fn maxpool(name: &str, kernel: usize, stride: usize, pad: usize) -> Layer {
    Layer::new(
        name,
        LayerKind::MaxPool2d(Pool2dParams {
            kernel,
            stride,
            pad,
        }),
    )
}
fn linear(name: &str, fin: usize, fout: usize) -> Layer {
    Layer::new(name, LayerKind::Linear(Linear::new(name, fin, fout)))
}
fn dropout(name: &str) -> Layer {
    Layer::new(name, LayerKind::Dropout(0.5))
}

/// Spatial size after a conv/pool, or a clear error naming the model when the input is too small.
fn shrink(model: &str, size: usize, k: usize, s: usize, p: usize, what: &str) -> Result<usize> {
    crate::backend::out_dim(size, k, s, p).ok_or_else(|| {
        Error::InvalidArg(format!(
            "{model}: input too small: {what} (kernel {k}, stride {s}, pad {p}) does not fit a \
             {size}x{size} map"
        ))
    })
}

pub(crate) fn build(
    name: &str,
    num_classes: usize,
    in_shape: (usize, usize, usize),
    width: usize,
    seed: u64,
) -> Result<Arch> {
    let (c, h, w) = in_shape;
    if !(2..=MAX_CLASSES).contains(&num_classes) {
        return Err(Error::InvalidArg(format!(
            "{name}: num_classes must be in 2..={MAX_CLASSES}, got {num_classes}"
        )));
    }
    if width > MAX_WIDTH {
        return Err(Error::InvalidArg(format!(
            "{name}: width {width} is above the limit of {MAX_WIDTH}"
        )));
    }
    if h > MAX_SIDE || w > MAX_SIDE || c > 4 {
        return Err(Error::InvalidArg(format!(
            "{name}: input shape {c}x{h}x{w} is above the limits (at most 4 channels, sides of at \
             most {MAX_SIDE} pixels)"
        )));
    }
    if c == 0 || h == 0 || w == 0 {
        return Err(Error::InvalidArg(format!(
            "{name}: input shape {c}x{h}x{w} has a zero dimension"
        )));
    }
    if width == 0 {
        return Err(Error::InvalidArg(format!("{name}: width must be positive")));
    }
    let side = h.min(w);
    let (arch, policy) = match name {
        "alexnet" => (
            alexnet(c, num_classes, side, name)?,
            InitPolicy::TorchDefault,
        ),
        "small-alexnet" => (
            small_alexnet(c, num_classes, width, side, name)?,
            InitPolicy::TorchDefault,
        ),
        "vgg16" => (
            vgg(c, num_classes, &VGG16_CFG, 64, 4096, 7, side, name)?,
            InitPolicy::Vgg,
        ),
        "small-vgg16" => (
            vgg(
                c,
                num_classes,
                &SMALL_VGG16_CFG,
                width,
                16 * width,
                3,
                side,
                name,
            )?,
            InitPolicy::Vgg,
        ),
        "resnet18" => (
            resnet18(c, num_classes, width, false, side, name)?,
            InitPolicy::ResNet,
        ),
        "small-resnet18" => (
            resnet18(c, num_classes, width, true, side, name)?,
            InitPolicy::ResNet,
        ),
        _ => return Err(Error::unknown("model", name, KNOWN_MODELS)),
    };
    let mut arch = arch;
    // The zero-filled tensors above are not touched yet; refuse a model too large to train
    // before the initialisation writes every parameter.
    let params: usize = arch
        .layers
        .iter()
        .flat_map(|l| l.params())
        .map(|p| p.value.numel())
        .sum();
    if params > MAX_PARAMS {
        return Err(Error::InvalidArg(format!(
            "{name} (width {width}, {num_classes} classes, input {c}x{h}x{w}) would have {params} \
             parameters, above the limit of {MAX_PARAMS}"
        )));
    }
    init(&mut arch.layers, policy, seed)?;
    Ok(arch)
}

fn alexnet(c: usize, nc: usize, side: usize, model: &str) -> Result<Arch> {
    let mut s = shrink(model, side, 11, 4, 2, "features.0")?;
    s = shrink(model, s, 3, 2, 0, "features.2")?;
    s = shrink(model, s, 3, 2, 0, "features.5")?;
    shrink(model, s, 3, 2, 0, "features.12")?;
    let layers = vec![
        conv("features.0", c, 64, 11, 4, 2),
        relu("features.1"),
        maxpool("features.2", 3, 2, 0),
        conv("features.3", 64, 192, 5, 1, 2),
        relu("features.4"),
        maxpool("features.5", 3, 2, 0),
        conv("features.6", 192, 384, 3, 1, 1),
        relu("features.7"),
        conv("features.8", 384, 256, 3, 1, 1),
        relu("features.9"),
        conv("features.10", 256, 256, 3, 1, 1),
        relu("features.11"),
        maxpool("features.12", 3, 2, 0),
        Layer::new("avgpool", LayerKind::AdaptiveAvgPool2d(6, 6)),
        Layer::new("flatten", LayerKind::Flatten),
        dropout("classifier.0"),
        linear("classifier.1", 256 * 36, 4096),
        relu("classifier.2"),
        dropout("classifier.3"),
        linear("classifier.4", 4096, 4096),
        relu("classifier.5"),
        linear("classifier.6", 4096, nc),
    ];
    Ok(Arch { layers, phi_at: 13 })
}

/// AlexNet's pattern at 1/8 scale by default: the same 13 feature modules (5 convs, 3 max-pools)
/// with channels w, 2w, 4w, 4w, 4w, a 5x5 stride-1 first conv and 2x2 stride-2 pools (so 28 ->
/// 14 -> 7 -> 3), adaptive average pooling to 3x3 and a 16w-16w-classes classifier.
fn small_alexnet(c: usize, nc: usize, w: usize, side: usize, model: &str) -> Result<Arch> {
    let mut s = side;
    for m in ["features.2", "features.5", "features.12"] {
        s = shrink(model, s, 2, 2, 0, m)?;
    }
    let layers = vec![
        conv("features.0", c, w, 5, 1, 2),
        relu("features.1"),
        maxpool("features.2", 2, 2, 0),
        conv("features.3", w, 2 * w, 5, 1, 2),
        relu("features.4"),
        maxpool("features.5", 2, 2, 0),
        conv("features.6", 2 * w, 4 * w, 3, 1, 1),
        relu("features.7"),
        conv("features.8", 4 * w, 4 * w, 3, 1, 1),
        relu("features.9"),
        conv("features.10", 4 * w, 4 * w, 3, 1, 1),
        relu("features.11"),
        maxpool("features.12", 2, 2, 0),
        Layer::new("avgpool", LayerKind::AdaptiveAvgPool2d(3, 3)),
        Layer::new("flatten", LayerKind::Flatten),
        dropout("classifier.0"),
        linear("classifier.1", 4 * w * 9, 16 * w),
        relu("classifier.2"),
        dropout("classifier.3"),
        linear("classifier.4", 16 * w, 16 * w),
        relu("classifier.5"),
        linear("classifier.6", 16 * w, nc),
    ];
    Ok(Arch { layers, phi_at: 13 })
}

/// Channel multipliers of the width (0 = max-pool).
const VGG16_CFG: [usize; 18] = [1, 1, 0, 2, 2, 0, 4, 4, 4, 0, 8, 8, 8, 0, 8, 8, 8, 0];
const SMALL_VGG16_CFG: [usize; 10] = [1, 1, 0, 2, 2, 0, 4, 4, 4, 0];

#[allow(clippy::too_many_arguments)]
fn vgg(
    c: usize,
    nc: usize,
    cfg: &[usize],
    width: usize,
    hidden: usize,
    pool_out: usize,
    side: usize,
    model: &str,
) -> Result<Arch> {
    let mut layers = Vec::new();
    let mut cin = c;
    let mut s = side;
    for &m in cfg {
        let i = layers.len();
        if m == 0 {
            s = shrink(model, s, 2, 2, 0, &format!("features.{i}"))?;
            layers.push(maxpool(&format!("features.{i}"), 2, 2, 0));
        } else {
            let cout = m * width;
            layers.push(conv(&format!("features.{i}"), cin, cout, 3, 1, 1));
            layers.push(relu(&format!("features.{}", i + 1)));
            cin = cout;
        }
    }
    let phi_at = layers.len();
    layers.extend([
        Layer::new("avgpool", LayerKind::AdaptiveAvgPool2d(pool_out, pool_out)),
        Layer::new("flatten", LayerKind::Flatten),
        linear("classifier.0", cin * pool_out * pool_out, hidden),
        relu("classifier.1"),
        dropout("classifier.2"),
        linear("classifier.3", hidden, hidden),
        relu("classifier.4"),
        dropout("classifier.5"),
        linear("classifier.6", hidden, nc),
    ]);
    Ok(Arch { layers, phi_at })
}

fn resnet18(c: usize, nc: usize, w: usize, small: bool, side: usize, model: &str) -> Result<Arch> {
    let (k, s, p) = if small { (3, 1, 1) } else { (7, 2, 3) };
    let mut sz = shrink(model, side, k, s, p, "conv1")?;
    sz = shrink(model, sz, 3, 2, 1, "maxpool")?;
    let mut layers = vec![
        Layer::new(
            "conv1",
            LayerKind::Conv2d(Conv2d::new("conv1", c, w, k, s, p, false)),
        ),
        Layer::new(
            "bn1",
            LayerKind::BatchNorm2d(super::layers::BatchNorm2d::new("bn1", w)),
        ),
        relu("relu"),
        maxpool("maxpool", 3, 2, 1),
    ];
    let mut cin = w;
    for (li, (mult, stride)) in [(1, 1), (2, 2), (4, 2), (8, 2)].into_iter().enumerate() {
        let cout = mult * w;
        for bi in 0..2 {
            let name = format!("layer{}.{bi}", li + 1);
            let st = if bi == 0 { stride } else { 1 };
            sz = shrink(model, sz, 3, st, 1, &format!("{name}.conv1"))?;
            layers.push(Layer::new(
                name.clone(),
                LayerKind::BasicBlock(Box::new(BasicBlock::new(&name, cin, cout, st))),
            ));
            cin = cout;
        }
    }
    let phi_at = layers.len();
    layers.extend([
        Layer::new("avgpool", LayerKind::AdaptiveAvgPool2d(1, 1)),
        Layer::new("flatten", LayerKind::Flatten),
        linear("fc", cin, nc),
    ]);
    Ok(Arch { layers, phi_at })
}

// ---- initialisation ---------------------------------------------------------------------------

/// Fill `p` with values drawn from its own stream (the seed and the parameter's name), so adding
/// a layer never shifts the init of the others.
fn fill(p: &mut Param, seed: u64, draw: impl Fn(&mut Rng) -> f64) -> Result<()> {
    let label = p.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = Rng::derive(seed, label);
    let n = p.value.numel();
    let v: Vec<f32> = (0..n).map(|_| draw(&mut rng) as f32).collect();
    p.value = Tensor::from_vec(p.value.shape(), v)?;
    Ok(())
}

fn fan_in(p: &Param) -> usize {
    p.value.shape()[1..].iter().product::<usize>().max(1)
}

fn kaiming_normal_fan_out(p: &mut Param, seed: u64) -> Result<()> {
    let s = p.value.shape();
    let fan_out = (s[0] * s[2..].iter().product::<usize>()).max(1);
    let std = (2.0 / fan_out as f64).sqrt();
    fill(p, seed, |r| std * r.normal())
}

/// torch's default for Conv/Linear: kaiming_uniform(a = sqrt(5)) on the weight, which is
/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the same bound for the bias.
fn torch_default(weight: &mut Param, bias: Option<&mut Param>, seed: u64) -> Result<()> {
    let bound = 1.0 / (fan_in(weight) as f64).sqrt();
    fill(weight, seed, |r| bound * (2.0 * r.uniform() - 1.0))?;
    if let Some(b) = bias {
        fill(b, seed, |r| bound * (2.0 * r.uniform() - 1.0))?;
    }
    Ok(())
}

fn init_conv(c: &mut Conv2d, policy: InitPolicy, seed: u64) -> Result<()> {
    match policy {
        InitPolicy::TorchDefault => torch_default(&mut c.weight, c.bias.as_mut(), seed),
        InitPolicy::Vgg | InitPolicy::ResNet => {
            kaiming_normal_fan_out(&mut c.weight, seed)?;
            if let Some(b) = &mut c.bias {
                b.value = Tensor::zeros(b.value.shape());
            }
            Ok(())
        }
    }
}

fn init(layers: &mut [Layer], policy: InitPolicy, seed: u64) -> Result<()> {
    for l in layers {
        match &mut l.kind {
            LayerKind::Conv2d(c) => init_conv(c, policy, seed)?,
            LayerKind::Linear(lin) => match policy {
                InitPolicy::Vgg => {
                    fill(&mut lin.weight, seed, |r| 0.01 * r.normal())?;
                    lin.bias.value = Tensor::zeros(lin.bias.value.shape());
                }
                _ => torch_default(&mut lin.weight, Some(&mut lin.bias), seed)?,
            },
            LayerKind::BasicBlock(b) => {
                init_conv(&mut b.conv1, policy, seed)?;
                init_conv(&mut b.conv2, policy, seed)?;
                if let Some((c, _)) = &mut b.downsample {
                    init_conv(c, policy, seed)?;
                }
            }
            // BatchNorm starts at (1, 0) with running (0, 1), as constructed.
            _ => {}
        }
    }
    Ok(())
}
