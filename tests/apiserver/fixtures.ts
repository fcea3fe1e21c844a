/**
 * What a fresh test cluster holds: the usual namespaces, the `kubernetes`
 * Service, two Nodes and two running Pods (targets for exec/log/portforward),
 * and the bootstrap RBAC (`cluster-admin`, discovery for everyone).
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
    ...bootstrapRbac(),
  ];
}

/**
 * The default RBAC objects the real server bootstraps that matter here:
 * `cluster-admin` for `system:masters`, discovery/OpenAPI and version paths
 * for every authenticated user, and self access reviews.
 */
function bootstrapRbac(): { resource: [string, string, string]; object: KubeObject }[] {
  const g = "rbac.authorization.k8s.io";
  const meta = (name: string) => ({
    name,
    labels: { "kubernetes.io/bootstrapping": "rbac-defaults" },
    annotations: { "rbac.authorization.kubernetes.io/autoupdate": "true" },
  });
  const role = (name: string, rules: Record<string, string[]>[]) => ({
    resource: [g, "v1", "clusterroles"] as [string, string, string],
    object: { metadata: meta(name), rules } as KubeObject,
  });
  const binding = (name: string, groups: string[]) => ({
    resource: [g, "v1", "clusterrolebindings"] as [string, string, string],
    object: {
      metadata: meta(name),
      roleRef: { apiGroup: g, kind: "ClusterRole", name },
      subjects: groups.map((n) => ({ apiGroup: g, kind: "Group", name: n })),
    } as KubeObject,
  });
  return [
    role("cluster-admin", [
      { apiGroups: ["*"], resources: ["*"], verbs: ["*"] },
      { nonResourceURLs: ["*"], verbs: ["*"] },
    ]),
    role("system:discovery", [{
      nonResourceURLs: [
        "/api",
        "/api/*",
        "/apis",
        "/apis/*",
        "/healthz",
        "/livez",
        "/openapi",
        "/openapi/*",
        "/readyz",
        "/version",
        "/version/",
      ],
      verbs: ["get"],
    }]),
    role("system:basic-user", [{
      apiGroups: ["authorization.k8s.io"],
      resources: ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
      verbs: ["create"],
    }]),
    role("system:public-info-viewer", [{
      nonResourceURLs: ["/healthz", "/livez", "/readyz", "/version", "/version/"],
      verbs: ["get"],
    }]),
    binding("cluster-admin", ["system:masters"]),
    binding("system:discovery", ["system:authenticated"]),
    binding("system:basic-user", ["system:authenticated"]),
    binding("system:public-info-viewer", ["system:authenticated", "system:unauthenticated"]),
  ];
}
