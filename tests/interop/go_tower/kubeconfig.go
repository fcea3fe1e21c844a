package main

// The part of a kubeconfig the original agent uses (through client-go's clientcmd): the current
// context's server and the inline certificate data. clientcmd leaves *-data empty when the
// kubeconfig names files instead, and the agent never sends a kubeconfig's token, so neither is
// read here. The rendition reads JSON kubeconfigs only (JSON is YAML; Go has no YAML package).

import (
	"encoding/json"
	"fmt"
	"os"
)

type kubeconfig struct {
	host                      string
	caData, certData, keyData []byte
}

func readKubeconfig(path string) (*kubeconfig, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f struct {
		CurrentContext string `json:"current-context"`
		Contexts       []struct {
			Name    string `json:"name"`
			Context struct {
				Cluster string `json:"cluster"`
				User    string `json:"user"`
			} `json:"context"`
		} `json:"contexts"`
		Clusters []struct {
			Name    string `json:"name"`
			Cluster struct {
				Server string `json:"server"`
				CAData []byte `json:"certificate-authority-data"`
			} `json:"cluster"`
		} `json:"clusters"`
		Users []struct {
			Name string `json:"name"`
			User struct {
				CertData []byte `json:"client-certificate-data"`
				KeyData  []byte `json:"client-key-data"`
			} `json:"user"`
		} `json:"users"`
	}
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, fmt.Errorf("kubeconfig %s (JSON only in this rendition): %v", path, err)
	}
	kc := &kubeconfig{}
	for _, c := range f.Contexts {
		if c.Name != f.CurrentContext {
			continue
		}
		for _, cl := range f.Clusters {
			if cl.Name == c.Context.Cluster {
				kc.host, kc.caData = cl.Cluster.Server, cl.Cluster.CAData
			}
		}
		for _, u := range f.Users {
			if u.Name == c.Context.User {
				kc.certData, kc.keyData = u.User.CertData, u.User.KeyData
			}
		}
	}
	if kc.host == "" {
		return nil, fmt.Errorf("kubeconfig %s: no server for context %q", path, f.CurrentContext)
	}
	return kc, nil
}
