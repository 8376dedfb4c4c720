//! The CPU backend: the oracle every other backend is checked against.
use super::*;
use crate::error::Error;

fn nyi(op: &str) -> Error {
    Error::InvalidArg(format!("cpu backend: {op} not implemented yet"))
}

#[derive(Default, Debug, Clone)]
pub struct CpuBackend;

impl CpuBackend {
    pub fn new() -> CpuBackend {
        CpuBackend
    }
}

#[allow(unused_variables)]
impl Backend for CpuBackend {
    fn name(&self) -> String {
        "cpu".into()
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn upload(&self, t: &Tensor) -> Result<Tensor> {
        Tensor::from_vec(t.shape(), t.to_vec()?)
    }
    fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor::zeros(shape))
    }
    fn conv2d(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        p: Conv2dParams,
    ) -> Result<Tensor> {
        Err(nyi("conv2d"))
    }
    fn conv2d_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        p: Conv2dParams,
        want_dx: bool,
    ) -> Result<Conv2dGrads> {
        Err(nyi("conv2d_backward"))
    }
    fn maxpool2d(&self, x: &Tensor, p: Pool2dParams) -> Result<Tensor> {
        Err(nyi("maxpool2d"))
    }
    fn maxpool2d_backward(&self, x: &Tensor, dy: &Tensor, p: Pool2dParams) -> Result<Tensor> {
        Err(nyi("maxpool2d_backward"))
    }
    fn adaptive_avgpool2d(&self, x: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
        Err(nyi("adaptive_avgpool2d"))
    }
    fn adaptive_avgpool2d_backward(&self, dy: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        Err(nyi("adaptive_avgpool2d_backward"))
    }
    fn relu(&self, x: &Tensor) -> Result<Tensor> {
        Err(nyi("relu"))
    }
    fn relu_backward(&self, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
        Err(nyi("relu_backward"))
    }
    fn dropout(&self, x: &Tensor, p: f32, seed: u64) -> Result<(Tensor, Tensor)> {
        Err(nyi("dropout"))
    }
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Err(nyi("add"))
    }
    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Err(nyi("mul"))
    }
    fn scale(&self, x: &Tensor, alpha: f32) -> Result<Tensor> {
        Err(nyi("scale"))
    }
    fn axpy(&self, acc: &mut Tensor, alpha: f32, x: &Tensor) -> Result<()> {
        Err(nyi("axpy"))
    }
    fn sum_squares(&self, x: &Tensor) -> Result<f64> {
        Err(nyi("sum_squares"))
    }
    fn linear(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        Err(nyi("linear"))
    }
    fn linear_backward(&self, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<LinearGrads> {
        Err(nyi("linear_backward"))
    }
    fn batchnorm2d_train(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
    ) -> Result<BatchNormTrain> {
        Err(nyi("batchnorm2d_train"))
    }
    fn batchnorm2d_eval(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f32,
    ) -> Result<Tensor> {
        Err(nyi("batchnorm2d_eval"))
    }
    fn batchnorm2d_backward(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        eps: f32,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        Err(nyi("batchnorm2d_backward"))
    }
    fn batchnorm2d_eval_backward(
        &self,
        gamma: &Tensor,
        running_var: &Tensor,
        eps: f32,
        dy: &Tensor,
    ) -> Result<Tensor> {
        Err(nyi("batchnorm2d_eval_backward"))
    }
    fn softmax_xent(&self, logits: &Tensor, labels: &[u32]) -> Result<(Tensor, Tensor)> {
        Err(nyi("softmax_xent"))
    }
    fn softmax(&self, logits: &Tensor) -> Result<Tensor> {
        Err(nyi("softmax"))
    }
    fn sgd_step(
        &self,
        param: &mut Tensor,
        grad: &Tensor,
        buf: &mut Tensor,
        h: SgdParams,
    ) -> Result<()> {
        Err(nyi("sgd_step"))
    }
    fn adam_step(
        &self,
        param: &mut Tensor,
        grad: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        h: AdamParams,
    ) -> Result<()> {
        Err(nyi("adam_step"))
    }
    fn fgs_step(&self, x: &Tensor, grad: &Tensor, eps: f32, lo: f32, hi: f32) -> Result<Tensor> {
        Err(nyi("fgs_step"))
    }
    fn channel_max(&self, x: &Tensor) -> Result<Tensor> {
        Err(nyi("channel_max"))
    }
    fn channel_mean(&self, x: &Tensor) -> Result<Tensor> {
        Err(nyi("channel_mean"))
    }
    fn quadform(&self, p: &Tensor, c: &Tensor, q: &Tensor) -> Result<QuadForm> {
        Err(nyi("quadform"))
    }
}
