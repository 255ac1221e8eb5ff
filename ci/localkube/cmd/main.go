// Command localkube is kubestrap's development localkube: the Kubernetes
// server components built from the upstream source tree as one multi-call
// binary, plus a supervisor that runs them as one node and a cluster DNS
// server. It is copied into the tree as cmd/localkube by
// ci/localkube/build.sh and built with the tree's own vendored modules.
//
//	localkube server ...               run a node (etcd, containerd, the five
//	                                   components and DNS), supervised
//	localkube dns ...                  the cluster DNS server alone
//	localkube kube-apiserver ...       one upstream component (also by argv[0])
package main

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/restclient"
	_ "k8s.io/component-base/metrics/prometheus/version"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

// commands maps a component name to its upstream cobra command.
var commands = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
	"kubelet":                 kubelet.NewKubeletCommand,
	"kube-proxy":              proxy.NewProxyCommand,
	"server":                  newServerCommand,
	"dns":                     newDNSCommand,
	"version":                 newVersionCommand,
}

func main() {
	rand.Seed(time.Now().UnixNano())
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if _, ok := commands[name]; !ok {
		if len(args) == 0 {
			usage()
			os.Exit(2)
		}
		name, args = args[0], args[1:]
	}
	mk, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "localkube: unknown command %q\n", name)
		usage()
		os.Exit(2)
	}
	cmd := mk()
	cmd.SetArgs(args)
	logs.InitLogs()
	defer logs.FlushLogs()
	if err := cmd.Execute(); err != nil {
		os.Exit(1)
	}
}

func usage() {
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintf(os.Stderr, "usage: localkube COMMAND [ARGS...]\ncommands: %v\n", names)
}
