"""The Kubernetes API as the services that run on it use it (the orchestrator's pods and ModelDeployments, the
autoscaler's PodAutoscalers). Needs kubernetes-asyncio, which only those services depend on."""
