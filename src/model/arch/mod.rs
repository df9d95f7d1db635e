//! Supported backbones, one definition each over the `Ops` trait.
pub mod dla;
pub mod efficientnet;
pub mod fishnet;
pub mod hrnet;
pub mod resnet;

use serde::{Deserialize, Serialize};

use crate::model::error::{ModelError, Result};
use crate::model::ops::Ops;
use crate::model::vars::VarPath;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    EfficientnetLite0,
    Resnet50,
    Resnet101,
    HrnetW18,
    HrnetW30,
    Dla102x,
    Fishnet99,
}

/// How the service must prepare pixels for a backbone's weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocess {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Arch {
    pub const ALL: [Arch; 7] = [
        Arch::EfficientnetLite0,
        Arch::Resnet50,
        Arch::Resnet101,
        Arch::HrnetW18,
        Arch::HrnetW30,
        Arch::Dla102x,
        Arch::Fishnet99,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Arch::EfficientnetLite0 => "efficientnet_lite0",
            Arch::Resnet50 => "resnet50",
            Arch::Resnet101 => "resnet101",
            Arch::HrnetW18 => "hrnet_w18",
            Arch::HrnetW30 => "hrnet_w30",
            Arch::Dla102x => "dla102x",
            Arch::Fishnet99 => "fishnet99",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| ModelError::InvalidOption(format!("unknown arch {s:?}")))
    }

    /// Channels of the final feature map.
    pub fn feature_channels(self) -> usize {
        match self {
            Arch::EfficientnetLite0 => 1280,
            Arch::Resnet50 | Arch::Resnet101 => 2048,
            Arch::HrnetW18 | Arch::HrnetW30 => hrnet::NUM_FEATURES,
            Arch::Dla102x => 1024,
            // FishNet's final score map halves the 2112-ch concat.
            Arch::Fishnet99 => 1056,
        }
    }

    /// State-dict prefix of the ImageNet classifier (ignored when it is not exported).
    pub fn classifier_prefix(self) -> &'static str {
        match self {
            Arch::EfficientnetLite0 => "_fc",
            Arch::Resnet50 | Arch::Resnet101 | Arch::Dla102x => "fc",
            Arch::HrnetW18 | Arch::HrnetW30 => "classifier",
            Arch::Fishnet99 => "fish.fish.9.4",
        }
    }

    pub fn preprocess(self) -> Preprocess {
        match self {
            // TF-converted Lite weights expect (x*255 - 127) / 128.
            Arch::EfficientnetLite0 => Preprocess {
                mean: [127.0 / 255.0; 3],
                std: [128.0 / 255.0; 3],
            },
            _ => Preprocess {
                mean: [0.485, 0.456, 0.406],
                std: [0.229, 0.224, 0.225],
            },
        }
    }

    pub fn features<O: Ops>(self, ops: &mut O, x: &O::Tensor, vp: &VarPath) -> Result<O::Tensor> {
        match self {
            Arch::EfficientnetLite0 => efficientnet::EfficientNetLite::lite0().features(ops, x, vp),
            Arch::Resnet50 => resnet::ResNet::resnet50().features(ops, x, vp),
            Arch::Resnet101 => resnet::ResNet::resnet101().features(ops, x, vp),
            Arch::HrnetW18 => hrnet::HrNet::w18().features(ops, x, vp),
            Arch::HrnetW30 => hrnet::HrNet::w30().features(ops, x, vp),
            Arch::Dla102x => dla::Dla::dla102x().features(ops, x, vp),
            Arch::Fishnet99 => fishnet::FishNet::fishnet99().features(ops, x, vp),
        }
    }

    /// ImageNet logits from average-pooled features.
    pub fn classifier<O: Ops>(
        self,
        ops: &mut O,
        pooled: &O::Tensor,
        vp: &VarPath,
    ) -> Result<O::Tensor> {
        match self {
            Arch::EfficientnetLite0 => {
                efficientnet::EfficientNetLite::lite0().classifier(ops, pooled, vp)
            }
            Arch::Resnet50 => resnet::ResNet::resnet50().classifier(ops, pooled, vp),
            Arch::Resnet101 => resnet::ResNet::resnet101().classifier(ops, pooled, vp),
            Arch::HrnetW18 => hrnet::HrNet::w18().classifier(ops, pooled, vp),
            Arch::HrnetW30 => hrnet::HrNet::w30().classifier(ops, pooled, vp),
            Arch::Dla102x => dla::Dla::dla102x().classifier(ops, pooled, vp),
            Arch::Fishnet99 => fishnet::FishNet::fishnet99().classifier(ops, pooled, vp),
        }
    }
}

impl std::str::FromStr for Arch {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Arch::ALL {
            assert_eq!(a.name().parse::<Arch>().unwrap(), a);
            assert_eq!(a.to_string(), a.name());
        }
        assert!(matches!(
            "resnet18".parse::<Arch>(),
            Err(ModelError::InvalidOption(_))
        ));
    }
}
