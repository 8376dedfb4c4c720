//! [`Model`]: a named architecture with its parameters, the caches of its last forward pass, and
//! the entry points used by training, attacks and analyses (see the module docs of `crate::nn`).

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

use super::arch;
use super::layers::{BatchNorm2d, BwdMode, FwdMode, Layer, LayerKind, Param, Saved};

/// What identifies an architecture: enough to rebuild it (checkpoints store it).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelSpec {
    pub name: String,
    pub num_classes: usize,
    /// (channels, height, width) of one input image.
    pub in_shape: (usize, usize, usize),
    /// Channel count of the first conv layer (the scale knob of the small variants; 64 for the
    /// ImageNet-size models, where it is fixed by torchvision).
    pub width: usize,
}

impl ModelSpec {
    /// A spec with the model's default width.
    pub fn new(name: &str, num_classes: usize, in_shape: (usize, usize, usize)) -> ModelSpec {
        ModelSpec {
            name: name.to_string(),
            num_classes,
            in_shape,
            width: arch::default_width(name),
        }
    }
}

/// Where a named conv layer's activation is read.
#[derive(Clone, Copy, Debug)]
enum Tap {
    /// Output of `layers[i]` (the ReLU after a conv, or a residual block's output).
    Output(usize),
    /// relu(bn1(conv1(x))) inside the residual block `layers[i]`.
    BlockConv1(usize),
}

/// Input normalisation (x/255 - mean_c)/std_c, expressed as an eval-mode batch norm with
/// running_mean = 255*mean, running_var = (255*std)^2, gamma 1, beta 0, eps 0, so every backend
/// runs it (and its backward) with ops it already has.
#[derive(Clone)]
struct NormDev {
    ones: Tensor,
    zeros: Tensor,
    rm: Tensor,
    rv: Tensor,
}

struct Cache {
    train: bool,
    /// acts[0] = normalised input; acts[i + 1] = output of layers[i], except that a layer run
    /// together with the ReLU after it (`relu_fused_after`) leaves an empty tensor: only the
    /// ReLU's output is computed, and a conv's or batch norm's backward reads its input, never
    /// its output.
    acts: Vec<Tensor>,
    saved: Vec<Saved>,
}

pub struct Model {
    spec: ModelSpec,
    seed: u64,
    layers: Vec<Layer>,
    phi_at: usize,
    taps: Vec<(String, Tap)>,
    norm_mean: Vec<f32>,
    norm_std: Vec<f32>,
    norm_dev: Option<NormDev>,
    /// Backend name the tensors live on; None = host tensors (usable by the CPU backend).
    device: Option<String>,
    cache: Option<Cache>,
    /// Training forwards done so far (dropout masks are seeded by it; saved in checkpoints so a
    /// resumed run draws the same masks).
    pub train_steps: u64,
    param_grads: bool,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Model({} width {} classes {} input {:?})",
            self.spec.name, self.spec.width, self.spec.num_classes, self.spec.in_shape
        )
    }
}

/// The per-channel (mean, std) of the input normalisation: Fashion-MNIST for 1 channel, ImageNet
/// for 3.
pub fn normalisation(channels: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    match channels {
        1 => Ok((vec![0.2860], vec![0.3530])),
        3 => Ok((vec![0.485, 0.456, 0.406], vec![0.229, 0.224, 0.225])),
        c => Err(Error::InvalidArg(format!(
            "no input normalisation is defined for {c}-channel images (1: Fashion-MNIST, \
             3: ImageNet)"
        ))),
    }
}

pub(crate) fn on_backend(be: &dyn Backend, x: &Tensor) -> Result<Option<Tensor>> {
    // A host tensor given to a device backend is uploaded; anything else is used as it is.
    if x.is_cpu() && be.name() != "cpu" {
        Ok(Some(be.upload(x)?))
    } else {
        Ok(None)
    }
}

impl Model {
    /// Build `name` (one of [`arch::KNOWN_MODELS`]) with its default width.
    pub fn build(
        name: &str,
        num_classes: usize,
        in_shape: (usize, usize, usize),
        seed: u64,
    ) -> Result<Model> {
        Model::from_spec(&ModelSpec::new(name, num_classes, in_shape), seed)
    }

    pub fn from_spec(spec: &ModelSpec, seed: u64) -> Result<Model> {
        let a = arch::build(
            &spec.name,
            spec.num_classes,
            spec.in_shape,
            spec.width,
            seed,
        )?;
        let (norm_mean, norm_std) = normalisation(spec.in_shape.0)?;
        let taps = taps(&a.layers);
        Ok(Model {
            spec: spec.clone(),
            seed,
            layers: a.layers,
            phi_at: a.phi_at,
            taps,
            norm_mean,
            norm_std,
            norm_dev: None,
            device: None,
            cache: None,
            train_steps: 0,
            param_grads: true,
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }
    pub fn name(&self) -> &str {
        &self.spec.name
    }
    pub fn num_classes(&self) -> usize {
        self.spec.num_classes
    }
    pub fn in_shape(&self) -> (usize, usize, usize) {
        self.spec.in_shape
    }
    pub fn seed(&self) -> u64 {
        self.seed
    }
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    // ---- placement ----------------------------------------------------------------------------

    /// Move every parameter, gradient and buffer onto `be` (no-op when already there). Every
    /// `&mut self` entry point calls it; `head` and `forward_with_activations` need it done.
    pub fn to_backend(&mut self, be: &dyn Backend) -> Result<()> {
        let name = be.name();
        let here = self.device.as_deref().unwrap_or("cpu");
        if here == name && self.norm_dev.is_some() {
            return Ok(());
        }
        if here != name {
            for p in self.params_mut() {
                p.value = be.upload(&p.value)?;
                if let Some(g) = &p.grad {
                    p.grad = Some(be.upload(g)?);
                }
            }
            for bn in self.batchnorms_mut() {
                bn.running_mean.value = be.upload(&bn.running_mean.value)?;
                bn.running_var.value = be.upload(&bn.running_var.value)?;
            }
            self.cache = None;
        }
        let c = self.norm_mean.len();
        let rm: Vec<f32> = self.norm_mean.iter().map(|m| 255.0 * m).collect();
        let rv: Vec<f32> = self
            .norm_std
            .iter()
            .map(|s| (255.0 * s) * (255.0 * s))
            .collect();
        self.norm_dev = Some(NormDev {
            ones: be.upload(&Tensor::from_vec(&[c], vec![1.0; c])?)?,
            zeros: be.zeros(&[c])?,
            rm: be.upload(&Tensor::from_vec(&[c], rm)?)?,
            rv: be.upload(&Tensor::from_vec(&[c], rv)?)?,
        });
        self.device = Some(name);
        Ok(())
    }

    /// Record that every tensor is now a host tensor (after loading weights from a file).
    pub(crate) fn mark_host(&mut self) {
        self.device = None;
        self.norm_dev = None;
        self.cache = None;
    }

    fn check_device(&self, be: &dyn Backend) -> Result<&NormDev> {
        let here = self.device.as_deref().unwrap_or("cpu");
        match &self.norm_dev {
            Some(n) if here == be.name() => Ok(n),
            _ => Err(Error::InvalidArg(format!(
                "model {} lives on {here}, not on {}: call Model::to_backend first",
                self.spec.name,
                be.name()
            ))),
        }
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let (c, h, w) = self.spec.in_shape;
        match x.shape() {
            [n, xc, xh, xw] if *n > 0 && (*xc, *xh, *xw) == (c, h, w) => Ok(()),
            s => Err(Error::shape(
                "model.forward",
                format!(
                    "{} expects input [N, {c}, {h}, {w}] with N > 0, got {s:?}",
                    self.spec.name
                ),
            )),
        }
    }

    fn normalise(&self, be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        let nd = self.check_device(be)?;
        be.batchnorm2d_eval(x, &nd.ones, &nd.zeros, &nd.rm, &nd.rv, 0.0)
    }

    fn step_seed(&self) -> u64 {
        crate::rng::hash64(self.seed ^ 0xD50F_0D5E_ED00_0001, self.train_steps)
    }

    // ---- forward ------------------------------------------------------------------------------

    /// Logits [N, classes] of images x [N, C, H, W] on the 0..255 pixel scale. Caches what
    /// `backward`, `phi` need. `train` selects batch statistics + dropout and updates the
    /// BatchNorm running statistics; eval mode uses running statistics and no dropout.
    pub fn forward(&mut self, be: &dyn Backend, x: &Tensor, train: bool) -> Result<Tensor> {
        self.to_backend(be)?;
        self.check_input(x)?;
        self.cache = None;
        let up = on_backend(be, x)?;
        let x = up.as_ref().unwrap_or(x);
        let mode = FwdMode {
            train,
            dropout_seed: self.step_seed(),
        };
        let mut acts = Vec::with_capacity(self.layers.len() + 1);
        let mut saved = Vec::with_capacity(self.layers.len());
        acts.push(self.normalise(be, x)?);
        let mut i = 0;
        while i < self.layers.len() {
            let l = &self.layers[i];
            if self.relu_fused_after(i, train) {
                let (y, s) = l.forward_relu(be, &acts[i]).map_err(|e| ctx(e, l))?;
                acts.extend([Tensor::zeros(&[0]), y]);
                saved.extend([s, Saved::None]);
                i += 2;
                continue;
            }
            let (y, s) = l.forward(be, &acts[i], mode, i).map_err(|e| ctx(e, l))?;
            acts.push(y);
            saved.push(s);
            i += 1;
        }
        if train {
            for (i, l) in self.layers.iter_mut().enumerate() {
                l.commit(be, &acts[i], &saved[i])?;
            }
            self.train_steps += 1;
        }
        let logits = acts[self.layers.len()].clone();
        self.cache = Some(Cache { train, acts, saved });
        Ok(logits)
    }

    /// Eval-mode logits with nothing cached (evaluation loops): keeps memory to two activations.
    pub fn predict(&mut self, be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        self.to_backend(be)?;
        self.check_input(x)?;
        let up = on_backend(be, x)?;
        let x = up.as_ref().unwrap_or(x);
        let h = self.normalise(be, x)?;
        self.eval_from(be, h, 0)
    }

    /// Eval-mode output of the layers from `start` on, given their input h; nothing cached.
    fn eval_from(&self, be: &dyn Backend, mut h: Tensor, start: usize) -> Result<Tensor> {
        let mode = FwdMode {
            train: false,
            dropout_seed: 0,
        };
        let mut i = start;
        while i < self.layers.len() {
            let l = &self.layers[i];
            if self.relu_fused_after(i, false) {
                h = l.forward_relu(be, &h).map_err(|e| ctx(e, l))?.0;
                i += 2;
            } else {
                h = l.forward(be, &h, mode, i).map_err(|e| ctx(e, l))?.0;
                i += 1;
            }
        }
        Ok(h)
    }

    /// Whether layers[i] runs with the ReLU layers[i + 1] as one op: a conv, or a batch norm in
    /// eval mode, unless phi is the layer's own output (acts[i + 1]).
    fn relu_fused_after(&self, i: usize, train: bool) -> bool {
        self.layers[i].takes_relu_after(train)
            && self
                .layers
                .get(i + 1)
                .is_some_and(|r| matches!(r.kind, LayerKind::ReLU))
            && self.phi_at != i + 1
    }

    /// Whether the backward of layers[i] also takes the ReLU layers[i - 1] (one op for both):
    /// its input gradient is wanted, and phi, where an extra gradient joins, is not between them.
    fn relu_fused_before(&self, i: usize, m: BwdMode) -> bool {
        i >= 1
            && m.want_dx
            && self.layers[i].takes_relu_before()
            && matches!(self.layers[i - 1].kind, LayerKind::ReLU)
            && self.phi_at != i
    }

    /// phi of the last `forward`: the last conv representation (AlexNet/VGG: output of the last
    /// max-pool, 'pool5'; ResNet: output of layer4, before avgpool), [N, C', H', W'].
    pub fn phi(&self) -> Result<&Tensor> {
        self.cache
            .as_ref()
            .map(|c| &c.acts[self.phi_at])
            .ok_or_else(|| Error::InvalidArg("Model::phi: no forward pass has been run".into()))
    }

    /// Shape of phi for one image, (C', H', W').
    pub fn phi_shape(&self) -> Result<(usize, usize, usize)> {
        let (c, h, w) = self.spec.in_shape;
        let mut s = vec![1, c, h, w];
        for l in &self.layers[..self.phi_at] {
            s = out_shape(l, &s)?;
        }
        match s[..] {
            [_, c, h, w] => Ok((c, h, w)),
            _ => Err(Error::shape(
                "phi_shape",
                format!("phi is not rank 4: {s:?}"),
            )),
        }
    }

    /// g: logits of the rest of the network (eval mode) on a given phi [N, C', H', W'], which may
    /// be modified (e.g. a channel zeroed). Touches no cache.
    pub fn head(&self, be: &dyn Backend, phi: &Tensor) -> Result<Tensor> {
        self.check_device(be)?;
        let up = on_backend(be, phi)?;
        let h = up.unwrap_or_else(|| phi.clone());
        self.eval_from(be, h, self.phi_at)
    }

    /// Names of the conv layers whose activations `forward_with_activations` can return, in
    /// network order (torchvision module names: "features.0", "layer1.0.conv1", ...).
    pub fn conv_layer_names(&self) -> Vec<String> {
        self.taps.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Eval-mode logits and the post-ReLU activation [N, C, H, W] of each requested conv layer,
    /// in the order asked. Nothing is cached. For a ResNet block, `<block>.conv1` gives
    /// relu(bn1(conv1(x))) and `<block>.conv2` the block output relu(bn2(conv2(.)) + shortcut).
    pub fn forward_with_activations(
        &mut self,
        be: &dyn Backend,
        x: &Tensor,
        names: &[&str],
    ) -> Result<(Tensor, Vec<Tensor>)> {
        self.to_backend(be)?;
        self.check_input(x)?;
        let mut want: Vec<(usize, Tap)> = Vec::with_capacity(names.len());
        for (k, n) in names.iter().enumerate() {
            match self.taps.iter().find(|(t, _)| t == n) {
                Some((_, tap)) => want.push((k, *tap)),
                None => {
                    let known = self.conv_layer_names();
                    let known: Vec<&str> = known.iter().map(String::as_str).collect();
                    return Err(Error::unknown("conv layer", *n, &known));
                }
            }
        }
        let up = on_backend(be, x)?;
        let x = up.as_ref().unwrap_or(x);
        let mut out: Vec<Option<Tensor>> = vec![None; names.len()];
        let mut h = self.normalise(be, x)?;
        let mode = FwdMode {
            train: false,
            dropout_seed: 0,
        };
        for (i, l) in self.layers.iter().enumerate() {
            let (y, s) = l.forward(be, &h, mode, i).map_err(|e| ctx(e, l))?;
            for (k, tap) in &want {
                match (tap, &s) {
                    (Tap::Output(j), _) if *j == i => out[*k] = Some(y.clone()),
                    (Tap::BlockConv1(j), Saved::Block(b)) if *j == i => {
                        out[*k] = Some(b.h1.clone())
                    }
                    _ => {}
                }
            }
            h = y;
        }
        let acts = out
            .into_iter()
            .zip(names)
            .map(|(t, n)| {
                t.ok_or_else(|| {
                    Error::shape("forward_with_activations", format!("{n}: not reached"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((h, acts))
    }

    // ---- backward -----------------------------------------------------------------------------

    /// Whether `backward` accumulates parameter gradients (default true). Attacks switch it off:
    /// the input gradient then costs no weight-gradient bookkeeping.
    pub fn set_param_grads(&mut self, on: bool) {
        self.param_grads = on;
    }
    pub fn param_grads(&self) -> bool {
        self.param_grads
    }

    /// A copy of this host model without its activation cache or parameter gradients, for a
    /// thread of its own (`attack::ifgs` on parts of a batch). None for a model on a device
    /// backend. The weights are copied: a few MB for the small models, but hundreds for the
    /// ImageNet-size ones.
    pub fn replica(&self) -> Option<Model> {
        if self.device.as_deref().is_some_and(|d| d != "cpu") {
            return None;
        }
        let mut m = Model {
            spec: self.spec.clone(),
            seed: self.seed,
            layers: self.layers.clone(),
            phi_at: self.phi_at,
            taps: self.taps.clone(),
            norm_mean: self.norm_mean.clone(),
            norm_std: self.norm_std.clone(),
            norm_dev: self.norm_dev.clone(),
            device: self.device.clone(),
            cache: None,
            train_steps: self.train_steps,
            param_grads: self.param_grads,
        };
        for p in m.params_mut() {
            p.grad = None;
        }
        Some(m)
    }

    /// Backpropagate `dlogits` [N, classes] (the gradient of the loss with respect to the logits
    /// of the last `forward`), plus `dphi_extra` [same shape as phi] added at phi when given.
    /// Accumulates (+=) parameter gradients unless `set_param_grads(false)`; returns the gradient
    /// with respect to the 0..255 input when `want_input_grad`. The caches stay valid, so phi()
    /// can still be read afterwards.
    pub fn backward(
        &mut self,
        be: &dyn Backend,
        dlogits: &Tensor,
        dphi_extra: Option<&Tensor>,
        want_input_grad: bool,
    ) -> Result<Option<Tensor>> {
        let cache = self.cache.take().ok_or_else(|| {
            Error::InvalidArg("Model::backward: no forward pass to backpropagate".into())
        })?;
        let r = self.backward_cached(be, &cache, dlogits, dphi_extra, want_input_grad);
        self.cache = Some(cache);
        r
    }

    fn backward_cached(
        &mut self,
        be: &dyn Backend,
        cache: &Cache,
        dlogits: &Tensor,
        dphi_extra: Option<&Tensor>,
        want_input_grad: bool,
    ) -> Result<Option<Tensor>> {
        let n = self.layers.len();
        if dlogits.shape() != cache.acts[n].shape() {
            return Err(Error::shape(
                "model.backward",
                format!(
                    "dlogits has shape {:?}, the logits of the last forward {:?}",
                    dlogits.shape(),
                    cache.acts[n].shape()
                ),
            ));
        }
        if let Some(d) = dphi_extra {
            if d.shape() != cache.acts[self.phi_at].shape() {
                return Err(Error::shape(
                    "model.backward",
                    format!(
                        "dphi_extra has shape {:?}, phi of the last forward {:?}",
                        d.shape(),
                        cache.acts[self.phi_at].shape()
                    ),
                ));
            }
        }
        let param_grads = self.param_grads;
        if !param_grads && !want_input_grad {
            return Ok(None);
        }
        let _ = cache.train;
        let up = on_backend(be, dlogits)?;
        let mut dy = up.unwrap_or_else(|| dlogits.clone());
        let mut i = n;
        while i > 0 {
            i -= 1;
            if i + 1 == self.phi_at {
                if let Some(d) = dphi_extra {
                    let up = on_backend(be, d)?;
                    be.axpy(&mut dy, 1.0, up.as_ref().unwrap_or(d))?;
                }
            }
            let m = BwdMode {
                want_dx: i > 0 || want_input_grad,
                param_grads,
            };
            // Whether layers[i - 1], the ReLU, is asked for its input gradient.
            let prev_wants = i > 1 || want_input_grad;
            if prev_wants && self.relu_fused_before(i, m) {
                let l = &mut self.layers[i];
                dy = l
                    .backward_relu(be, &cache.acts[i], &dy, m)
                    .map_err(|e| ctx(e, l))?;
                i -= 1;
                continue;
            }
            let l = &mut self.layers[i];
            let dx = l
                .backward(
                    be,
                    &cache.acts[i],
                    &cache.acts[i + 1],
                    &cache.saved[i],
                    &dy,
                    m,
                )
                .map_err(|e| ctx(e, l))?;
            match dx {
                Some(d) => dy = d,
                None => return Ok(None),
            }
        }
        let nd = self.check_device(be)?;
        Ok(Some(
            be.batchnorm2d_eval_backward(&nd.ones, &nd.rv, 0.0, &dy)?,
        ))
    }

    // ---- parameters ---------------------------------------------------------------------------

    /// Every parameter in state_dict order, with its torchvision name.
    pub fn params(&self) -> Vec<&Param> {
        self.layers.iter().flat_map(|l| l.params()).collect()
    }
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        self.layers
            .iter_mut()
            .flat_map(|l| l.params_mut())
            .collect()
    }
    pub fn num_params(&self) -> usize {
        self.params().iter().map(|p| p.value.numel()).sum()
    }
    pub fn batchnorms(&self) -> Vec<&BatchNorm2d> {
        self.layers.iter().flat_map(|l| l.batchnorms()).collect()
    }
    pub fn batchnorms_mut(&mut self) -> Vec<&mut BatchNorm2d> {
        self.layers
            .iter_mut()
            .flat_map(|l| l.batchnorms_mut())
            .collect()
    }

    /// Drop every accumulated gradient.
    pub fn zero_grad(&mut self) {
        for p in self.params_mut() {
            p.grad = None;
        }
    }

    /// Drop the caches of the last forward (frees its activations).
    pub fn clear_cache(&mut self) {
        self.cache = None;
    }
}

/// Prefix a layer error with the module name, so a shape problem names where it happened.
fn ctx(e: Error, l: &Layer) -> Error {
    match e {
        Error::Shape { op, msg } => Error::Shape {
            op,
            msg: format!("{} ({}): {msg}", l.module, kind_name(&l.kind)),
        },
        e => e,
    }
}

fn kind_name(k: &LayerKind) -> &'static str {
    match k {
        LayerKind::Conv2d(_) => "Conv2d",
        LayerKind::BatchNorm2d(_) => "BatchNorm2d",
        LayerKind::ReLU => "ReLU",
        LayerKind::MaxPool2d(_) => "MaxPool2d",
        LayerKind::AdaptiveAvgPool2d(..) => "AdaptiveAvgPool2d",
        LayerKind::Flatten => "Flatten",
        LayerKind::Linear(_) => "Linear",
        LayerKind::Dropout(_) => "Dropout",
        LayerKind::BasicBlock(_) => "BasicBlock",
    }
}

/// Output shape of a layer for input shape `s` (geometry only).
fn out_shape(l: &Layer, s: &[usize]) -> Result<Vec<usize>> {
    let bad = || Error::shape("phi_shape", format!("{}: bad input shape {s:?}", l.module));
    let dim = |x: usize, k: usize, st: usize, p: usize| {
        crate::backend::out_dim(x, k, st, p).ok_or_else(bad)
    };
    Ok(match &l.kind {
        LayerKind::Conv2d(c) => {
            let w = c.weight.value.shape();
            let (k, st, p) = (w[2], c.params.stride, c.params.pad);
            vec![s[0], w[0], dim(s[2], k, st, p)?, dim(s[3], k, st, p)?]
        }
        LayerKind::MaxPool2d(p) => vec![
            s[0],
            s[1],
            dim(s[2], p.kernel, p.stride, p.pad)?,
            dim(s[3], p.kernel, p.stride, p.pad)?,
        ],
        LayerKind::AdaptiveAvgPool2d(oh, ow) => vec![s[0], s[1], *oh, *ow],
        LayerKind::Flatten => vec![s[0], s[1..].iter().product()],
        LayerKind::Linear(lin) => vec![s[0], lin.weight.value.shape()[0]],
        LayerKind::BasicBlock(b) => {
            let w = b.conv1.weight.value.shape();
            let st = b.conv1.params.stride;
            vec![s[0], w[0], dim(s[2], 3, st, 1)?, dim(s[3], 3, st, 1)?]
        }
        _ => s.to_vec(),
    })
}

/// Named conv taps: a sequential conv reports the output of the first ReLU after it; a residual
/// block reports `<block>.conv1` (inner ReLU) and `<block>.conv2` (block output).
fn taps(layers: &[Layer]) -> Vec<(String, Tap)> {
    let mut v = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        match &l.kind {
            LayerKind::Conv2d(_) => {
                if let Some(j) =
                    (i + 1..layers.len()).find(|&j| matches!(layers[j].kind, LayerKind::ReLU))
                {
                    v.push((l.module.clone(), Tap::Output(j)));
                }
            }
            LayerKind::BasicBlock(_) => {
                v.push((format!("{}.conv1", l.module), Tap::BlockConv1(i)));
                v.push((format!("{}.conv2", l.module), Tap::Output(i)));
            }
            _ => {}
        }
    }
    v
}
