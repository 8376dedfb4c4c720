//! Neural networks without autograd: layers with explicit forward/backward, the models of the
//! paper with torchvision's layer structure and parameter names, optimisers, checkpoints, and the
//! training/evaluation loops.
//!
//! # Models
//!
//! | name | input | structure |
//! |---|---|---|
//! | `alexnet` | 3x224x224 | torchvision AlexNet (features.0..12, avgpool 6x6, classifier.0..6), 61,100,840 params at 1000 classes |
//! | `vgg16` | 3x224x224 | torchvision VGG-16 (no BN; features.0..30, avgpool 7x7, classifier.0..6), 138,357,544 params |
//! | `resnet18` | 3x224x224 | torchvision ResNet-18 (conv1, bn1, maxpool, layer1..4 x 2 BasicBlocks, fc), 11,689,512 params |
//! | `small-alexnet` | any small (1x28x28) | see below |
//! | `small-vgg16` | any small | see below |
//! | `small-resnet18` | any small | see below |
//!
//! Parameter names are torchvision's state_dict keys (`features.0.weight`, `layer2.0.downsample.1.
//! running_var`, `fc.bias` ...), so a torchvision state_dict exported to safetensors loads with
//! [`Model::load_weights`]. The small variants keep each architecture's module pattern and naming
//! and scale it with one knob, `width` (w, default 8 = the first conv's channel count):
//!
//! - `small-alexnet`: the same 13 feature modules: conv 5x5/s1/p2 (w) - relu - maxpool 2/2 -
//!   conv 5x5/p2 (2w) - relu - maxpool 2/2 - conv 3x3 (4w) - relu - conv 3x3 (4w) - relu -
//!   conv 3x3 (4w) - relu - maxpool 2/2 (28 -> 14 -> 7 -> 3); adaptive avgpool 3x3; classifier
//!   dropout - linear(36w, 16w) - relu - dropout - linear(16w, 16w) - relu - linear(16w, classes).
//!   (ImageNet AlexNet: 11x11/s4 first conv, 3x3/s2 pools, channels 64-192-384-256-256, 4096.)
//! - `small-vgg16`: VGG-16's first three stages, [w, w, M, 2w, 2w, M, 4w, 4w, 4w, M] (7 convs
//!   3x3/p1 with ReLU, 2x2 max-pools; 28 -> 14 -> 7 -> 3; module indices features.0 .. features.16
//!   as in torchvision), adaptive avgpool 3x3, classifier linear(36w, 16w) - relu - dropout -
//!   linear(16w, 16w) - relu - dropout - linear(16w, classes). The last two stages of VGG-16
//!   are dropped: a 28x28 image has no room for five 2x2 pools.
//! - `small-resnet18`: ResNet-18 with all four stages of two BasicBlocks at widths w, 2w, 4w, 8w
//!   (strides 1, 2, 2, 2, 1x1 downsample where shape changes), a 3x3/s1/p1 stem conv instead of
//!   7x7/s2, the 3x3/s2/p1 max-pool kept (28 -> 14 -> 14 -> 7 -> 4 -> 2), global avgpool, fc.
//!
//! Inputs are images [N, C, H, W] on the 0..255 pixel scale (the scale the paper's attacks work
//! on). The model's first step is (x/255 - mean_c)/std_c (ImageNet mean/std for 3 channels,
//! Fashion-MNIST 0.2860/0.3530 for 1), and input gradients are with respect to the 0..255 input.
//!
//! Init follows torchvision: AlexNet uses torch's defaults (U(+-1/sqrt(fan_in)) for weights and
//! biases); VGG kaiming-normal(fan_out) convs with zero bias and N(0, 0.01) linears; ResNet
//! kaiming-normal(fan_out) convs, BN (1, 0), default-init fc. Each parameter draws from its own
//! stream of `crate::rng` derived from the seed and its name.
//!
//! # phi, g and named conv layers
//!
//! phi is the last conv representation: for AlexNet/VGG the output of the last max-pool
//! ('pool5'; for the small VGG the last of its three pools), for ResNet the output of layer4
//! (before avgpool). g (`Model::head`) is the rest of the network, run in eval mode.
//! `conv_layer_names` lists torchvision module names of conv layers; the activation reported for
//! a conv is the output of the ReLU that follows it; for a ResNet BasicBlock `<block>.conv1` is
//! relu(bn1(conv1(x))) and `<block>.conv2` is the block output relu(bn2(conv2(.)) + shortcut).
//! The stem `conv1` reports relu(bn1(conv1(x))). Downsample 1x1 convs are not listed (they have no
//! ReLU of their own).
//!
//! # API
//!
//! ```text
//! Model::build(name, num_classes, (c, h, w), seed) -> Result<Model>      // default width
//! Model::from_spec(&ModelSpec { name, num_classes, in_shape, width }, seed)
//! model.forward(be, &x, train) -> Result<Tensor>            // logits [N, K]; caches for backward
//! model.predict(be, &x) -> Result<Tensor>                   // eval logits, nothing cached
//! model.backward(be, &dlogits, dphi_extra: Option<&Tensor>, want_input_grad) -> Result<Option<Tensor>>
//!     // accumulates parameter gradients unless model.set_param_grads(false) (attacks)
//! model.phi() -> Result<&Tensor>       model.phi_shape() -> (C', H', W')
//! model.head(be, &phi) -> Result<Tensor>                    // g(phi), eval mode, no cache touched
//! model.conv_layer_names() -> Vec<String>
//! model.forward_with_activations(be, &x, &["features.0", ...]) -> Result<(Tensor, Vec<Tensor>)>
//! model.params() / params_mut() -> Vec<&(mut) Param>   (Param { name, value, grad: Option })
//! model.batchnorms() (running stats, num_batches_tracked); model.zero_grad(); model.to_backend(be)
//! model.train_steps (dropout masks are seeded by it; saved in checkpoints)
//! Model::load(path) -> Result<Model>          // advlens checkpoint (metadata rebuilds the model)
//! model.save(path, epoch)                      // weights + buffers + spec metadata
//! model.load_weights(path)                     // any safetensors with the same names (torchvision)
//! checkpoint::save(path, &model, epoch, Some(&optimizer), &extra_metadata)
//! checkpoint::load(path) -> Checkpoint { model, optimizer: Option<Optimizer>, epoch, metadata }
//! optim::Optimizer::new(OptimConfig::sgd(lr, momentum, wd) | OptimConfig::adam(lr, wd))
//!     .step(be, &mut model)  .set_lr(lr)  .state_tensors()  .load_state(..)
//! train::train(be, &TrainConfig, &train_ds, Some(&val_ds), &RunDirs { out, resume }, &mut on_epoch)
//!     -> TrainOutcome { model, config, history: Vec<EpochReport>, last_checkpoint }
//! train::train_step(be, &mut model, &mut opt, &images, &labels) -> (loss sum, top-1 hits)
//! train::evaluate(be, &mut model, &ds, batch, limit) -> EvalReport { images, top1, top5, loss, seconds }
//! ```
//!
//! The loss convention: `Backend::softmax_xent` gives per-sample gradients; the training loop
//! scales dlogits by 1/N (mean loss, like torch's CrossEntropyLoss).

pub mod arch;
pub mod checkpoint;
pub mod diverge;
pub mod import;
pub mod layers;
pub mod model;
pub mod optim;
pub mod train;

pub use arch::KNOWN_MODELS;
pub use layers::Param;
pub use model::{Model, ModelSpec};
