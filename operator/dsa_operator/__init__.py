"""dsa-operator: runs DeepSeek Sparse Attention models on SGLang in Kubernetes."""

__version__ = "0.1.0"

GROUP = "serving.dsa.dev"
VERSION = "v1alpha1"
KIND = "DSAModel"
PLURAL = "dsamodels"
