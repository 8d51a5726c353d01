# The two commands of the README. Both install what they need themselves
# (Debian packages, Kubernetes binaries, the broker) and need root.

.PHONY: demo test crds

## Bring up the local cluster and broker, install streamops, run the example job.
demo:
	e2e/demo.sh

## Everything CI runs: fmt, clippy, unit, property, API, cluster tests.
test:
	e2e/test.sh

## Regenerate the committed CRD YAML (crds/ and the chart's copy) and crds/REFERENCE.md from the Rust types.
crds:
	cargo run -q -p streamops-crds --bin crdgen -- --write crds
	cargo run -q -p streamops-crds --bin crdgen -- --write charts/streamops/crds
	cargo run -q -p streamops-crds --bin crdgen -- --reference crds/REFERENCE.md
