/**
 * What a fresh test cluster holds: the usual namespaces, the `kubernetes`
 * Service, two Nodes and two running Pods (targets for exec/log/portforward).
 * @module
 */

import type { KubeObject } from "./types.ts";

/** Fixture objects by resource (group/version/plural), in creation order. */
export function fixtures(extraNamespaces: string[] = []): {
  resource: [string, string, string];
  object: KubeObject;
}[] {
  const ns = (name: string) => ({
    resource: ["", "v1", "namespaces"] as [string, string, string],
    object: { metadata: { name } },
  });
  const node = (name: string, ip: string, role?: string) => ({
    resource: ["", "v1", "nodes"] as [string, string, string],
    object: {
      metadata: {
        name,
        labels: {
          "kubernetes.io/hostname": name,
          "kubernetes.io/os": "linux",
          "kubernetes.io/arch": "amd64",
          ...(role ? { [`node-role.kubernetes.io/${role}`]: "" } : {}),
        },
      },
      spec: { podCIDR: `10.244.${ip.split(".")[3]}.0/24` },
      status: {
        addresses: [{ type: "InternalIP", address: ip }, { type: "Hostname", address: name }],
        capacity: { cpu: "4", memory: "8Gi", pods: "110" },
        allocatable: { cpu: "4", memory: "8Gi", pods: "110" },
        conditions: [{
          type: "Ready",
          status: "True",
          reason: "KubeletReady",
          message: "kubelet is posting ready status",
        }],
        nodeInfo: {
          kubeletVersion: "v1.32.0",
          kubeProxyVersion: "v1.32.0",
          containerRuntimeVersion: "containerd://1.7.0",
          operatingSystem: "linux",
          architecture: "amd64",
          osImage: "Test Linux",
          kernelVersion: "6.0.0",
        },
      },
    },
  });
  const pod = (name: string, ip: string, nodeName: string) => ({
    resource: ["", "v1", "pods"] as [string, string, string],
    object: {
      metadata: { name, namespace: "default", labels: { app: "web" } },
      spec: {
        nodeName,
        containers: [{ name: "main", image: "busybox:1.36", command: ["sleep", "infinity"] }],
      },
      status: {},
    },
    ip,
  });
  return [
    ...["default", "kube-system", "kube-public", "kube-node-lease", ...extraNamespaces].map(ns),
    {
      resource: ["", "v1", "services"],
      object: {
        metadata: {
          name: "kubernetes",
          namespace: "default",
          labels: { component: "apiserver", provider: "kubernetes" },
        },
        spec: {
          type: "ClusterIP",
          clusterIP: "10.96.0.1",
          ports: [{ name: "https", port: 443, protocol: "TCP", targetPort: 6443 }],
        },
      },
    },
    node("node-1", "192.168.0.11", "control-plane"),
    node("node-2", "192.168.0.12"),
    pod("web-0", "10.244.11.5", "node-1"),
    pod("web-1", "10.244.12.5", "node-2"),
  ];
}
