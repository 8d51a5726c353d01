// argocd-lua evaluates streamops' Argo CD health checks and resource actions
// with Argo CD's own code (github.com/argoproj/argo-cd/v3), configured the way
// an Argo CD installation is: the argocd-cm ConfigMap.
//
// The ConfigMap data comes from a file (charts/streamops/argocd/argocd-cm.yaml,
// a snippet with a `data:` map, or a whole ConfigMap manifest). It is put into
// a fake clientset as ConfigMap argocd/argocd-cm, labelled
// app.kubernetes.io/part-of=argocd as Argo CD's informer requires, and read
// back through Argo CD's SettingsManager.GetResourceOverrides(): the
// resource.customizations.* keys are parsed by Argo CD, not here. Then:
//
//	health           what the application controller does for a live object
//	                 (gitops-engine health.GetResourceHealth with
//	                 lua.ResourceHealthOverrides): {"status":..,"message":..}
//	actions          what the API server lists (GetResourceActionDiscovery +
//	                 ExecuteResourceActionDiscovery): [{"name":..,"disabled":..}]
//	action NAME      what the API server runs (GetResourceAction +
//	                 ExecuteResourceAction): the object the action returns;
//	                 with --merge-patch, the JSON merge patch from the live
//	                 object to it, which is what Argo CD sends to the apiserver
//	version          the Argo CD module versions linked in, and the source hash
//
// The object is read as JSON from standard input. Any error (no script for
// the kind, a Lua error, a bad result) exits 1 with a message on stderr.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"sort"

	jsonpatch "github.com/evanphx/json-patch"
	log "github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/yaml"

	"github.com/argoproj/argo-cd/gitops-engine/v3/pkg/health"
	appv1 "github.com/argoproj/argo-cd/v3/pkg/apis/application/v1alpha1"
	"github.com/argoproj/argo-cd/v3/util/lua"
	"github.com/argoproj/argo-cd/v3/util/settings"
)

// Set by build.sh (-ldflags -X): a hash of this module's sources.
var sourceHash = "unknown"

const usage = `usage: argocd-lua --argocd-cm FILE health|actions|action NAME [--merge-patch] < object.json
       argocd-lua version`

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "argocd-lua:", err)
		os.Exit(1)
	}
}

func run(args []string, stdin io.Reader, stdout io.Writer) error {
	var cmFile string
	var rest []string
	mergePatch := false
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "--argocd-cm":
			if i+1 >= len(args) {
				return errors.New("--argocd-cm needs a file\n" + usage)
			}
			cmFile = args[i+1]
			i++
		case "--merge-patch":
			mergePatch = true
		default:
			rest = append(rest, args[i])
		}
	}
	if len(rest) == 1 && rest[0] == "version" {
		return printVersion(stdout)
	}
	if cmFile == "" || len(rest) == 0 {
		return errors.New(usage)
	}
	overrides, err := resourceOverrides(cmFile)
	if err != nil {
		return err
	}
	obj, err := readObject(stdin)
	if err != nil {
		return err
	}
	switch {
	case rest[0] == "health" && len(rest) == 1:
		return printHealth(stdout, overrides, obj)
	case rest[0] == "actions" && len(rest) == 1:
		return printActions(stdout, overrides, obj)
	case rest[0] == "action" && len(rest) == 2:
		return runAction(stdout, overrides, obj, rest[1], mergePatch)
	}
	return errors.New(usage)
}

// resourceOverrides loads the ConfigMap data from file into argocd/argocd-cm
// of a fake clientset and lets Argo CD's SettingsManager parse it.
func resourceOverrides(file string) (map[string]appv1.ResourceOverride, error) {
	text, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var cm corev1.ConfigMap
	if err := yaml.UnmarshalStrict(text, &cm); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if cm.Kind != "" && cm.Kind != "ConfigMap" {
		return nil, fmt.Errorf("%s: kind %s, want a ConfigMap or a data: snippet", file, cm.Kind)
	}
	if len(cm.Data) == 0 {
		return nil, fmt.Errorf("%s: no data", file)
	}
	cm.ObjectMeta = metav1.ObjectMeta{
		Name:      "argocd-cm",
		Namespace: "argocd",
		Labels:    map[string]string{"app.kubernetes.io/part-of": "argocd"},
	}
	log.SetLevel(log.WarnLevel) // the SettingsManager's informer chatter
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mgr := settings.NewSettingsManager(ctx, fake.NewClientset(&cm), "argocd")
	overrides, err := mgr.GetResourceOverrides()
	if err != nil {
		return nil, fmt.Errorf("Argo CD's settings refuse %s: %w", file, err)
	}
	return overrides, nil
}

func readObject(r io.Reader) (*unstructured.Unstructured, error) {
	raw, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	obj := &unstructured.Unstructured{}
	if err := obj.UnmarshalJSON(raw); err != nil {
		return nil, fmt.Errorf("object on stdin: %w", err)
	}
	return obj, nil
}

func printJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func printHealth(w io.Writer, overrides map[string]appv1.ResourceOverride, obj *unstructured.Unstructured) error {
	hs, err := health.GetResourceHealth(obj, lua.ResourceHealthOverrides(overrides))
	if err != nil {
		return err
	}
	if hs == nil {
		return fmt.Errorf("no health check for %s (none in argocd-cm, none built in)", lua.GetConfigMapKey(obj.GroupVersionKind()))
	}
	return printJSON(w, map[string]string{"status": string(hs.Status), "message": hs.Message})
}

func printActions(w io.Writer, overrides map[string]appv1.ResourceOverride, obj *unstructured.Unstructured) error {
	vm := lua.VM{ResourceOverrides: overrides}
	scripts, err := vm.GetResourceActionDiscovery(obj)
	if err != nil {
		return err
	}
	if len(scripts) == 0 {
		return fmt.Errorf("no action discovery script for %s", lua.GetConfigMapKey(obj.GroupVersionKind()))
	}
	actions, err := vm.ExecuteResourceActionDiscovery(obj, scripts)
	if err != nil {
		return err
	}
	type action struct {
		Name     string `json:"name"`
		Disabled bool   `json:"disabled"`
	}
	out := make([]action, 0, len(actions))
	for _, a := range actions {
		out = append(out, action{a.Name, a.Disabled})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return printJSON(w, out)
}

func runAction(w io.Writer, overrides map[string]appv1.ResourceOverride, obj *unstructured.Unstructured, name string, mergePatch bool) error {
	live, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	vm := lua.VM{ResourceOverrides: overrides}
	def, err := vm.GetResourceAction(obj, name)
	if err != nil {
		return fmt.Errorf("action %q for %s: %w", name, lua.GetConfigMapKey(obj.GroupVersionKind()), err)
	}
	impacted, err := vm.ExecuteResourceAction(obj.DeepCopy(), def.ActionLua, nil)
	if err != nil {
		return fmt.Errorf("action %q: %w", name, err)
	}
	if len(impacted) != 1 || impacted[0].K8SOperation != lua.PatchOperation {
		return fmt.Errorf("action %q returned %d resources; this harness handles actions that patch the object itself", name, len(impacted))
	}
	updated, err := json.Marshal(impacted[0].UnstructuredObj)
	if err != nil {
		return err
	}
	if !mergePatch {
		_, err = fmt.Fprintf(w, "%s\n", updated)
		return err
	}
	// As Argo CD's API server (server/application patchResource) does.
	patch, err := jsonpatch.CreateMergePatch(live, updated)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", patch)
	return err
}

func printVersion(w io.Writer) error {
	versions := map[string]string{}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			versions[d.Path] = d.Version
		}
	}
	_, err := fmt.Fprintf(w, "argocd-lua argo-cd/v3 %s gitops-engine/v3 %s gopher-lua %s %s source %s\n",
		versions["github.com/argoproj/argo-cd/v3"], versions["github.com/argoproj/argo-cd/gitops-engine/v3"],
		versions["github.com/yuin/gopher-lua"], runtime.Version(), sourceHash)
	return err
}
