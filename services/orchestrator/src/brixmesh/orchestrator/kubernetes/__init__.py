"""The Kubernetes backend: ModelDeployment custom resources in, engine pods and headless Services out, one
active orchestrator per namespace (a Lease). See docs/kubernetes.md."""
