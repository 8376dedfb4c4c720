//! Layers with explicit forward and backward passes (no autograd).
//!
//! A layer's `forward` is pure (`&self`): it returns the output and a [`Saved`] record of what its
//! backward needs beyond its input and output (batch statistics, dropout mask, a residual block's
//! inner activations). The model keeps the inputs/outputs of every layer of the last forward and
//! the `Saved` records, so no activation is stored twice. Mutations that belong to a training
//! forward (BatchNorm running statistics) are applied separately by [`Layer::commit`], which lets
//! `Model::head` run layers on a modified phi without touching any state.

use crate::backend::{Backend, Conv2dGrads, Conv2dParams, Pool2dParams};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A learnable tensor with its accumulated gradient and its torchvision state_dict name.
#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub value: Tensor,
    /// None until a backward pass produced a gradient (and after `zero_grad`).
    pub grad: Option<Tensor>,
}

impl Param {
    pub fn new(name: String, value: Tensor) -> Param {
        Param {
            name,
            value,
            grad: None,
        }
    }

    /// grad += g (the first contribution is moved in, not copied).
    pub fn accumulate(&mut self, be: &dyn Backend, g: Tensor) -> Result<()> {
        match &mut self.grad {
            None => self.grad = Some(g),
            Some(acc) => be.axpy(acc, 1.0, &g)?,
        }
        Ok(())
    }
}

/// A non-learnable f32 state tensor saved in checkpoints (BatchNorm running statistics).
#[derive(Clone, Debug)]
pub struct Buffer {
    pub name: String,
    pub value: Tensor,
}

/// What the forward of a training/eval pass is asked to do.
#[derive(Clone, Copy, Debug)]
pub struct FwdMode {
    pub train: bool,
    /// Seed of this step's dropout masks (each dropout layer mixes in its own id).
    pub dropout_seed: u64,
}

/// What the backward of one layer is asked to produce.
#[derive(Clone, Copy, Debug)]
pub struct BwdMode {
    /// Return the gradient with respect to the layer input.
    pub want_dx: bool,
    /// Accumulate parameter gradients (false for attacks, which only need input gradients).
    pub param_grads: bool,
}

/// Per-layer record of a forward pass, beyond its input and output.
#[derive(Clone, Debug)]
pub enum Saved {
    None,
    /// Batch statistics (training mode) or nothing (eval mode: running statistics are used).
    Bn(BnSaved),
    /// Dropout mask (0 or 1/(1-p)); None in eval mode (identity).
    Dropout(Option<Tensor>),
    Block(Box<BlockSaved>),
}

#[derive(Clone, Debug)]
pub enum BnSaved {
    Train { mean: Tensor, var: Tensor },
    Eval,
}

#[derive(Clone, Debug)]
pub struct BlockSaved {
    /// conv1 output (bn1 input).
    a1: Tensor,
    bn1: BnSaved,
    /// relu(bn1(conv1(x))): conv2's input and the activation reported for `<block>.conv1`.
    pub h1: Tensor,
    /// conv2 output (bn2 input).
    a2: Tensor,
    bn2: BnSaved,
    /// downsample conv output (its bn input) and that bn's record.
    ds: Option<(Tensor, BnSaved)>,
}

// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Conv2d {
    pub weight: Param,
    pub bias: Option<Param>,
    pub params: Conv2dParams,
}

impl Conv2d {
    /// Weight [out, in, k, k], zero-initialised here; the model builder draws the init.
    pub fn new(
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        bias: bool,
    ) -> Conv2d {
        Conv2d {
            weight: Param::new(format!("{name}.weight"), Tensor::zeros(&[cout, cin, k, k])),
            bias: bias.then(|| Param::new(format!("{name}.bias"), Tensor::zeros(&[cout]))),
            params: Conv2dParams { stride, pad },
        }
    }

    fn forward(&self, be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        be.conv2d(
            x,
            &self.weight.value,
            self.bias.as_ref().map(|b| &b.value),
            self.params,
        )
    }

    fn backward(
        &mut self,
        be: &dyn Backend,
        x: &Tensor,
        dy: &Tensor,
        m: BwdMode,
    ) -> Result<Option<Tensor>> {
        if !m.want_dx && !m.param_grads {
            return Ok(None);
        }
        if !m.param_grads {
            return be
                .conv2d_backward_data(x, &self.weight.value, dy, self.params)
                .map(Some);
        }
        let g = be.conv2d_backward(x, &self.weight.value, dy, self.params, m.want_dx)?;
        self.accumulate(be, g)
    }

    /// The gradient at the input of the ReLU whose output x this conv reads, in one op (with
    /// the parameter gradients accumulated when `m` asks for them).
    fn backward_relu(
        &mut self,
        be: &dyn Backend,
        x: &Tensor,
        dy: &Tensor,
        m: BwdMode,
    ) -> Result<Tensor> {
        if !m.param_grads {
            return be.conv2d_backward_data_relu(x, &self.weight.value, dy, self.params);
        }
        let g = be.conv2d_backward_relu(x, &self.weight.value, dy, self.params)?;
        self.accumulate(be, g)?
            .ok_or_else(|| Error::shape("conv2d_backward_relu", "no input gradient returned"))
    }

    /// Accumulate dw and db into the parameters' gradients; returns dx.
    fn accumulate(&mut self, be: &dyn Backend, g: Conv2dGrads) -> Result<Option<Tensor>> {
        self.weight.accumulate(be, g.dw)?;
        if let Some(b) = &mut self.bias {
            b.accumulate(be, g.db)?;
        }
        Ok(g.dx)
    }
}

// ---------------------------------------------------------------------------------------------

/// torch.nn.BatchNorm2d: eps 1e-5, momentum 0.1, running_var updated with the unbiased variance.
#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    pub weight: Param,
    pub bias: Param,
    pub running_mean: Buffer,
    pub running_var: Buffer,
    /// Saved as i64 under `<name>.num_batches_tracked`, like torch.
    pub num_batches_tracked: i64,
    pub num_batches_name: String,
    pub eps: f32,
    pub momentum: f32,
}

impl BatchNorm2d {
    pub fn new(name: &str, c: usize) -> BatchNorm2d {
        BatchNorm2d {
            weight: Param::new(
                format!("{name}.weight"),
                Tensor::from_vec(&[c], vec![1.0; c]).unwrap_or_else(|_| Tensor::zeros(&[c])),
            ),
            bias: Param::new(format!("{name}.bias"), Tensor::zeros(&[c])),
            running_mean: Buffer {
                name: format!("{name}.running_mean"),
                value: Tensor::zeros(&[c]),
            },
            running_var: Buffer {
                name: format!("{name}.running_var"),
                value: Tensor::from_vec(&[c], vec![1.0; c]).unwrap_or_else(|_| Tensor::zeros(&[c])),
            },
            num_batches_tracked: 0,
            num_batches_name: format!("{name}.num_batches_tracked"),
            eps: 1e-5,
            momentum: 0.1,
        }
    }

    fn forward(&self, be: &dyn Backend, x: &Tensor, train: bool) -> Result<(Tensor, BnSaved)> {
        if train {
            let r = be.batchnorm2d_train(x, &self.weight.value, &self.bias.value, self.eps)?;
            Ok((
                r.y,
                BnSaved::Train {
                    mean: r.mean,
                    var: r.var,
                },
            ))
        } else {
            let y = be.batchnorm2d_eval(
                x,
                &self.weight.value,
                &self.bias.value,
                &self.running_mean.value,
                &self.running_var.value,
                self.eps,
            )?;
            Ok((y, BnSaved::Eval))
        }
    }

    /// Eval mode: relu(bn(x) + skip) as one op.
    fn forward_eval_relu(
        &self,
        be: &dyn Backend,
        x: &Tensor,
        skip: Option<&Tensor>,
    ) -> Result<Tensor> {
        be.batchnorm2d_eval_relu(
            x,
            &self.weight.value,
            &self.bias.value,
            &self.running_mean.value,
            &self.running_var.value,
            self.eps,
            skip,
        )
    }

    /// Eval mode, no parameter gradients: the gradient at this BN's input given the gradient dy
    /// at the output y of the ReLU after it, as one op.
    fn backward_eval_relu(&self, be: &dyn Backend, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
        be.batchnorm2d_eval_relu_backward(
            y,
            &self.weight.value,
            &self.running_var.value,
            self.eps,
            dy,
        )
    }

    /// Running-statistics update of a training forward over `x` (torch semantics).
    fn commit(&mut self, be: &dyn Backend, x: &Tensor, saved: &BnSaved) -> Result<()> {
        let BnSaved::Train { mean, var } = saved else {
            return Ok(());
        };
        let (n, _, h, w) = x.dims4("batchnorm2d")?;
        let count = (n * h * w) as f32;
        // torch divides by (count - 1); with a single value per channel it would be a division by
        // zero, and torch itself refuses to train BN on one value per channel.
        if count < 2.0 {
            return Err(Error::shape(
                "batchnorm2d",
                format!(
                    "{}: training mode needs more than one value per channel (got input {:?})",
                    self.weight.name,
                    x.shape()
                ),
            ));
        }
        let m = self.momentum;
        let mut rm = be.scale(&self.running_mean.value, 1.0 - m)?;
        be.axpy(&mut rm, m, mean)?;
        let mut rv = be.scale(&self.running_var.value, 1.0 - m)?;
        be.axpy(&mut rv, m * count / (count - 1.0), var)?;
        self.running_mean.value = rm;
        self.running_var.value = rv;
        self.num_batches_tracked += 1;
        Ok(())
    }

    fn backward(
        &mut self,
        be: &dyn Backend,
        x: &Tensor,
        saved: &BnSaved,
        dy: &Tensor,
        m: BwdMode,
    ) -> Result<Option<Tensor>> {
        match saved {
            BnSaved::Train { mean, var } => {
                let (dx, dg, db) =
                    be.batchnorm2d_backward(x, &self.weight.value, mean, var, self.eps, dy)?;
                if m.param_grads {
                    self.weight.accumulate(be, dg)?;
                    self.bias.accumulate(be, db)?;
                }
                Ok(m.want_dx.then_some(dx))
            }
            BnSaved::Eval => {
                if m.param_grads {
                    self.eval_param_grads(be, x, dy)?;
                }
                if !m.want_dx {
                    return Ok(None);
                }
                Ok(Some(be.batchnorm2d_eval_backward(
                    &self.weight.value,
                    &self.running_var.value,
                    self.eps,
                    dy,
                )?))
            }
        }
    }

    /// dgamma = sum dy * xhat, dbeta = sum dy over N,H,W, with xhat from the running statistics.
    /// Built from backend ops (xhat = BN-eval with gamma 1, beta 0) so it runs on any device; only
    /// the [N,C] per-sample sums travel to the host.
    fn eval_param_grads(&mut self, be: &dyn Backend, x: &Tensor, dy: &Tensor) -> Result<()> {
        let (n, c, h, w) = x.dims4("batchnorm2d_eval_backward")?;
        let ones = be.upload(&Tensor::from_vec(&[c], vec![1.0; c])?)?;
        let zeros = be.zeros(&[c])?;
        let xhat = be.batchnorm2d_eval(
            x,
            &ones,
            &zeros,
            &self.running_mean.value,
            &self.running_var.value,
            self.eps,
        )?;
        let prod = be.mul(dy, &xhat)?;
        let hw = (h * w) as f32;
        let sum_nc = |t: &Tensor| -> Result<Tensor> {
            let v = be.channel_mean(t)?.to_vec()?;
            let mut s = vec![0.0f32; c];
            for i in 0..n {
                for (j, sj) in s.iter_mut().enumerate() {
                    *sj += v[i * c + j] * hw;
                }
            }
            be.upload(&Tensor::from_vec(&[c], s)?)
        };
        let dg = sum_nc(&prod)?;
        let db = sum_nc(dy)?;
        self.weight.accumulate(be, dg)?;
        self.bias.accumulate(be, db)
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Param,
    pub bias: Param,
}

impl Linear {
    pub fn new(name: &str, fin: usize, fout: usize) -> Linear {
        Linear {
            weight: Param::new(format!("{name}.weight"), Tensor::zeros(&[fout, fin])),
            bias: Param::new(format!("{name}.bias"), Tensor::zeros(&[fout])),
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// torchvision BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), where the
/// shortcut is the identity or `downsample` = (1x1 conv with the block's stride, BN).
#[derive(Clone, Debug)]
pub struct BasicBlock {
    pub conv1: Conv2d,
    pub bn1: BatchNorm2d,
    pub conv2: Conv2d,
    pub bn2: BatchNorm2d,
    pub downsample: Option<(Conv2d, BatchNorm2d)>,
}

impl BasicBlock {
    pub fn new(name: &str, cin: usize, cout: usize, stride: usize) -> BasicBlock {
        let downsample = (stride != 1 || cin != cout).then(|| {
            (
                Conv2d::new(
                    &format!("{name}.downsample.0"),
                    cin,
                    cout,
                    1,
                    stride,
                    0,
                    false,
                ),
                BatchNorm2d::new(&format!("{name}.downsample.1"), cout),
            )
        });
        BasicBlock {
            conv1: Conv2d::new(&format!("{name}.conv1"), cin, cout, 3, stride, 1, false),
            bn1: BatchNorm2d::new(&format!("{name}.bn1"), cout),
            conv2: Conv2d::new(&format!("{name}.conv2"), cout, cout, 3, 1, 1, false),
            bn2: BatchNorm2d::new(&format!("{name}.bn2"), cout),
            downsample,
        }
    }

    fn forward(&self, be: &dyn Backend, x: &Tensor, train: bool) -> Result<(Tensor, BlockSaved)> {
        if !train {
            return self.forward_eval(be, x);
        }
        let a1 = self.conv1.forward(be, x)?;
        let (b1, bn1) = self.bn1.forward(be, &a1, train)?;
        let h1 = be.relu(&b1)?;
        drop(b1);
        let a2 = self.conv2.forward(be, &h1)?;
        let (mut z, bn2) = self.bn2.forward(be, &a2, train)?;
        let ds = match &self.downsample {
            Some((conv, bn)) => {
                let d = conv.forward(be, x)?;
                let (s, sbn) = bn.forward(be, &d, train)?;
                be.axpy(&mut z, 1.0, &s)?;
                Some((d, sbn))
            }
            None => {
                be.axpy(&mut z, 1.0, x)?;
                None
            }
        };
        let y = be.relu(&z)?;
        Ok((
            y,
            BlockSaved {
                a1,
                bn1,
                h1,
                a2,
                bn2,
                ds,
            },
        ))
    }

    /// The eval-mode forward, each BN run together with what follows it: relu(bn1(a1)), and
    /// relu(bn2(a2) + shortcut). The same bits as the training path's separate ops.
    fn forward_eval(&self, be: &dyn Backend, x: &Tensor) -> Result<(Tensor, BlockSaved)> {
        let a1 = self.conv1.forward(be, x)?;
        let h1 = self.bn1.forward_eval_relu(be, &a1, None)?;
        let a2 = self.conv2.forward(be, &h1)?;
        let (y, ds) = match &self.downsample {
            Some((conv, bn)) => {
                let d = conv.forward(be, x)?;
                let (s, sbn) = bn.forward(be, &d, false)?;
                let y = self.bn2.forward_eval_relu(be, &a2, Some(&s))?;
                (y, Some((d, sbn)))
            }
            None => (self.bn2.forward_eval_relu(be, &a2, Some(x))?, None),
        };
        let saved = BlockSaved {
            a1,
            bn1: BnSaved::Eval,
            h1,
            a2,
            bn2: BnSaved::Eval,
            ds,
        };
        Ok((y, saved))
    }

    fn commit(&mut self, be: &dyn Backend, s: &BlockSaved) -> Result<()> {
        self.bn1.commit(be, &s.a1, &s.bn1)?;
        self.bn2.commit(be, &s.a2, &s.bn2)?;
        if let (Some((_, bn)), Some((d, sbn))) = (&mut self.downsample, &s.ds) {
            bn.commit(be, d, sbn)?;
        }
        Ok(())
    }

    fn backward(
        &mut self,
        be: &dyn Backend,
        x: &Tensor,
        y: &Tensor,
        s: &BlockSaved,
        dy: &Tensor,
        m: BwdMode,
    ) -> Result<Option<Tensor>> {
        let dz = be.relu_backward(y, dy)?;
        // Inner layers always need their dx (the gradient must reach conv1); only the block's own
        // input gradient is optional.
        let inner = BwdMode {
            want_dx: true,
            param_grads: m.param_grads,
        };
        let need = |t: Option<Tensor>, what: &str| {
            t.ok_or_else(|| Error::shape("basic_block", format!("{what}: missing gradient")))
        };
        let da2 = need(self.bn2.backward(be, &s.a2, &s.bn2, &dz, inner)?, "bn2")?;
        let dh1 = need(self.conv2.backward(be, &s.h1, &da2, inner)?, "conv2")?;
        drop(da2);
        let da1 = if matches!(s.bn1, BnSaved::Eval) && !m.param_grads {
            self.bn1.backward_eval_relu(be, &s.h1, &dh1)?
        } else {
            let db1 = be.relu_backward(&s.h1, &dh1)?;
            need(self.bn1.backward(be, &s.a1, &s.bn1, &db1, inner)?, "bn1")?
        };
        drop(dh1);
        let dx_main = self.conv1.backward(be, x, &da1, m)?;
        let dx_skip = match (&mut self.downsample, &s.ds) {
            (Some((conv, bn)), Some((d, sbn))) => {
                let dd = need(bn.backward(be, d, sbn, &dz, inner)?, "downsample.1")?;
                conv.backward(be, x, &dd, m)?
            }
            _ => m.want_dx.then_some(dz),
        };
        match (dx_main, dx_skip) {
            (Some(mut a), Some(b)) => {
                be.axpy(&mut a, 1.0, &b)?;
                Ok(Some(a))
            }
            _ => Ok(None),
        }
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub enum LayerKind {
    Conv2d(Conv2d),
    BatchNorm2d(BatchNorm2d),
    ReLU,
    MaxPool2d(Pool2dParams),
    /// Output (height, width), like torch.nn.AdaptiveAvgPool2d.
    AdaptiveAvgPool2d(usize, usize),
    Flatten,
    Linear(Linear),
    /// Drop probability; the mask seed mixes the step seed with the layer's position.
    Dropout(f32),
    BasicBlock(Box<BasicBlock>),
}

/// One step of a model's layer sequence, named like the torchvision module it mirrors
/// ("features.3", "layer2.1", "avgpool", "flatten").
#[derive(Clone, Debug)]
pub struct Layer {
    pub module: String,
    pub kind: LayerKind,
}

impl Layer {
    pub fn new(module: impl Into<String>, kind: LayerKind) -> Layer {
        Layer {
            module: module.into(),
            kind,
        }
    }

    /// Pure forward. `id` is the layer's position (dropout seeds).
    pub fn forward(
        &self,
        be: &dyn Backend,
        x: &Tensor,
        mode: FwdMode,
        id: usize,
    ) -> Result<(Tensor, Saved)> {
        Ok(match &self.kind {
            LayerKind::Conv2d(c) => (c.forward(be, x)?, Saved::None),
            LayerKind::BatchNorm2d(bn) => {
                let (y, s) = bn.forward(be, x, mode.train)?;
                (y, Saved::Bn(s))
            }
            LayerKind::ReLU => (be.relu(x)?, Saved::None),
            LayerKind::MaxPool2d(p) => (be.maxpool2d(x, *p)?, Saved::None),
            LayerKind::AdaptiveAvgPool2d(oh, ow) => {
                (be.adaptive_avgpool2d(x, *oh, *ow)?, Saved::None)
            }
            LayerKind::Flatten => {
                let n = x.shape().first().copied().unwrap_or(0);
                let rest = x.numel().checked_div(n).unwrap_or(0);
                (x.clone().reshape(&[n, rest])?, Saved::None)
            }
            LayerKind::Linear(l) => (be.linear(x, &l.weight.value, &l.bias.value)?, Saved::None),
            LayerKind::Dropout(p) => {
                if mode.train && *p > 0.0 {
                    let seed = crate::rng::hash64(mode.dropout_seed, id as u64);
                    let (y, mask) = be.dropout(x, *p, seed)?;
                    (y, Saved::Dropout(Some(mask)))
                } else {
                    (x.clone(), Saved::Dropout(None))
                }
            }
            LayerKind::BasicBlock(b) => {
                let (y, s) = b.forward(be, x, mode.train)?;
                (y, Saved::Block(Box::new(s)))
            }
        })
    }

    /// Whether this layer's forward can take the ReLU after it (`forward_relu`): a conv, or a
    /// batch norm in eval mode.
    pub fn takes_relu_after(&self, train: bool) -> bool {
        match self.kind {
            LayerKind::Conv2d(_) => true,
            LayerKind::BatchNorm2d(_) => !train,
            _ => false,
        }
    }

    /// relu(forward(x)) in one op, for a layer that `takes_relu_after` (in eval mode), and the
    /// layer's record for its backward.
    pub fn forward_relu(&self, be: &dyn Backend, x: &Tensor) -> Result<(Tensor, Saved)> {
        match &self.kind {
            LayerKind::BatchNorm2d(bn) => {
                Ok((bn.forward_eval_relu(be, x, None)?, Saved::Bn(BnSaved::Eval)))
            }
            LayerKind::Conv2d(c) => Ok((
                be.conv2d_relu(
                    x,
                    &c.weight.value,
                    c.bias.as_ref().map(|b| &b.value),
                    c.params,
                )?,
                Saved::None,
            )),
            _ => Err(Error::InvalidArg(format!(
                "{}: only a conv or an eval-mode batch norm runs with the ReLU after it",
                self.module
            ))),
        }
    }

    /// Whether this layer's input gradient can take the ReLU before it (`backward_relu`): a
    /// max-pool or a conv.
    pub fn takes_relu_before(&self) -> bool {
        matches!(self.kind, LayerKind::MaxPool2d(_) | LayerKind::Conv2d(_))
    }

    /// The gradient at the input of the ReLU before this layer (whose output is x), in one op,
    /// for a layer that `takes_relu_before`; a conv accumulates its parameter gradients as
    /// `backward` does when `m` asks for them.
    pub fn backward_relu(
        &mut self,
        be: &dyn Backend,
        x: &Tensor,
        dy: &Tensor,
        m: BwdMode,
    ) -> Result<Tensor> {
        match &mut self.kind {
            LayerKind::MaxPool2d(p) => be.maxpool2d_relu_backward(x, dy, *p),
            LayerKind::Conv2d(c) => c.backward_relu(be, x, dy, m),
            _ => Err(Error::InvalidArg(format!(
                "{}: only a max-pool or a conv takes the ReLU before it",
                self.module
            ))),
        }
    }

    /// Apply the state changes of a training forward (BatchNorm running statistics).
    pub fn commit(&mut self, be: &dyn Backend, x: &Tensor, saved: &Saved) -> Result<()> {
        match (&mut self.kind, saved) {
            (LayerKind::BatchNorm2d(bn), Saved::Bn(s)) => bn.commit(be, x, s),
            (LayerKind::BasicBlock(b), Saved::Block(s)) => b.commit(be, s),
            _ => Ok(()),
        }
    }

    /// Backward given the forward's input `x`, output `y` and record.
    pub fn backward(
        &mut self,
        be: &dyn Backend,
        x: &Tensor,
        y: &Tensor,
        saved: &Saved,
        dy: &Tensor,
        m: BwdMode,
    ) -> Result<Option<Tensor>> {
        let mismatch = || {
            Error::shape(
                "backward",
                "layer record does not match the layer (model changed between forward and backward)",
            )
        };
        match &mut self.kind {
            LayerKind::Conv2d(c) => c.backward(be, x, dy, m),
            LayerKind::BatchNorm2d(bn) => match saved {
                Saved::Bn(s) => bn.backward(be, x, s, dy, m),
                _ => Err(mismatch()),
            },
            LayerKind::ReLU => Ok(m.want_dx.then(|| be.relu_backward(y, dy)).transpose()?),
            LayerKind::MaxPool2d(p) => Ok(m
                .want_dx
                .then(|| be.maxpool2d_backward(x, dy, *p))
                .transpose()?),
            LayerKind::AdaptiveAvgPool2d(..) => {
                let (_, _, h, w) = x.dims4("adaptive_avgpool2d_backward")?;
                Ok(m.want_dx
                    .then(|| be.adaptive_avgpool2d_backward(dy, h, w))
                    .transpose()?)
            }
            LayerKind::Flatten => Ok(m
                .want_dx
                .then(|| dy.clone().reshape(x.shape()))
                .transpose()?),
            LayerKind::Linear(l) => {
                let g = be.linear_backward(x, &l.weight.value, dy)?;
                if m.param_grads {
                    l.weight.accumulate(be, g.dw)?;
                    l.bias.accumulate(be, g.db)?;
                }
                Ok(m.want_dx.then_some(g.dx))
            }
            LayerKind::Dropout(_) => match saved {
                Saved::Dropout(Some(mask)) => {
                    Ok(m.want_dx.then(|| be.mul(dy, mask)).transpose()?)
                }
                Saved::Dropout(None) => Ok(m.want_dx.then(|| dy.clone())),
                _ => Err(mismatch()),
            },
            LayerKind::BasicBlock(b) => match saved {
                Saved::Block(s) => b.backward(be, x, y, s, dy, m),
                _ => Err(mismatch()),
            },
        }
    }

    /// Parameters in state_dict order (weight before bias, conv before bn).
    pub fn params(&self) -> Vec<&Param> {
        let mut v = Vec::new();
        match &self.kind {
            LayerKind::Conv2d(c) => push_conv(&mut v, c),
            LayerKind::BatchNorm2d(bn) => {
                v.push(&bn.weight);
                v.push(&bn.bias);
            }
            LayerKind::Linear(l) => {
                v.push(&l.weight);
                v.push(&l.bias);
            }
            LayerKind::BasicBlock(b) => {
                push_conv(&mut v, &b.conv1);
                v.extend([&b.bn1.weight, &b.bn1.bias]);
                push_conv(&mut v, &b.conv2);
                v.extend([&b.bn2.weight, &b.bn2.bias]);
                if let Some((c, bn)) = &b.downsample {
                    push_conv(&mut v, c);
                    v.extend([&bn.weight, &bn.bias]);
                }
            }
            _ => {}
        }
        v
    }

    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = Vec::new();
        match &mut self.kind {
            LayerKind::Conv2d(c) => push_conv_mut(&mut v, c),
            LayerKind::BatchNorm2d(bn) => {
                v.push(&mut bn.weight);
                v.push(&mut bn.bias);
            }
            LayerKind::Linear(l) => {
                v.push(&mut l.weight);
                v.push(&mut l.bias);
            }
            LayerKind::BasicBlock(b) => {
                let b = &mut **b;
                push_conv_mut(&mut v, &mut b.conv1);
                v.extend([&mut b.bn1.weight, &mut b.bn1.bias]);
                push_conv_mut(&mut v, &mut b.conv2);
                v.extend([&mut b.bn2.weight, &mut b.bn2.bias]);
                if let Some((c, bn)) = &mut b.downsample {
                    push_conv_mut(&mut v, c);
                    v.extend([&mut bn.weight, &mut bn.bias]);
                }
            }
            _ => {}
        }
        v
    }

    /// BatchNorm layers inside this layer (for buffers).
    pub fn batchnorms(&self) -> Vec<&BatchNorm2d> {
        match &self.kind {
            LayerKind::BatchNorm2d(bn) => vec![bn],
            LayerKind::BasicBlock(b) => {
                let mut v = vec![&b.bn1, &b.bn2];
                if let Some((_, bn)) = &b.downsample {
                    v.push(bn);
                }
                v
            }
            _ => Vec::new(),
        }
    }

    pub fn batchnorms_mut(&mut self) -> Vec<&mut BatchNorm2d> {
        match &mut self.kind {
            LayerKind::BatchNorm2d(bn) => vec![bn],
            LayerKind::BasicBlock(b) => {
                let b = &mut **b;
                let mut v = vec![&mut b.bn1, &mut b.bn2];
                if let Some((_, bn)) = &mut b.downsample {
                    v.push(bn);
                }
                v
            }
            _ => Vec::new(),
        }
    }
}

fn push_conv<'a>(v: &mut Vec<&'a Param>, c: &'a Conv2d) {
    v.push(&c.weight);
    if let Some(b) = &c.bias {
        v.push(b);
    }
}

fn push_conv_mut<'a>(v: &mut Vec<&'a mut Param>, c: &'a mut Conv2d) {
    v.push(&mut c.weight);
    if let Some(b) = &mut c.bias {
        v.push(b);
    }
}
