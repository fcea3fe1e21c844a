package main

// The original proxy (cmd/proxy/app/options.go, pkg/proxy/proxy.go): its agent port's routes, the
// WebSocket upgrade, the SSH server, what it does with the first request, its replies, and the
// requests and channels that follow. The Cluster objects it reads from the host cluster are given
// as --cluster flags; endpoints.go serves each cluster's two endpoints.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/crypto/ssh"
)

// clusterSpec is what the proxy reads from a Cluster object: its token and its two ports.
type clusterSpec struct {
	name, token                    string
	kubernetesPort, kubespherePort int
}

type clusterFlags map[string]clusterSpec

func (c clusterFlags) String() string { return fmt.Sprint(len(c)) }

// Set parses NAME=TOKEN,KUBERNETES_PORT,KUBESPHERE_PORT.
func (c clusterFlags) Set(v string) error {
	name, rest, ok := strings.Cut(v, "=")
	parts := strings.Split(rest, ",")
	if !ok || len(parts) != 3 {
		return errors.New("want NAME=TOKEN,KUBERNETES_PORT,KUBESPHERE_PORT")
	}
	kp, err1 := strconv.Atoi(parts[1])
	ksp, err2 := strconv.Atoi(parts[2])
	if err1 != nil || err2 != nil {
		return errors.New("ports must be numbers")
	}
	c[name] = clusterSpec{name: name, token: parts[0], kubernetesPort: kp, kubespherePort: ksp}
	return nil
}

type proxyServer struct {
	host, publish string
	clusters      clusterFlags
	sshConfig     *ssh.ServerConfig
	ca            *x509.Certificate
	caKey         crypto.Signer
	mu            sync.Mutex
	served        map[string]*clusterEndpoints
}

// The original's upgrader names no subprotocols: its 101 carries no Sec-WebSocket-Protocol.
var upgrader = websocket.Upgrader{
	ReadBufferSize:  1024,
	WriteBufferSize: 1024,
	CheckOrigin:     func(*http.Request) bool { return true },
}

func runProxy(args []string) {
	clusters := clusterFlags{}
	fs := flag.NewFlagSet("proxy", flag.ExitOnError)
	caCert := fs.String("ca-cert", "", "CA certificate file we use to validate server clients.")
	caKey := fs.String("ca-key", "", "CA private key to sign kubeconfig")
	host := fs.String("host", "0.0.0.0", "Host listening for agent connections")
	port := fs.Int("port", 8080, "Port listening for agent connections.")
	publish := fs.String("publish-service-address", "127.0.0.1", "Proxy service address")
	fs.String("kubeconfig", "", "Kubeconfig file absolute path (unused: clusters come from --cluster)")
	fs.Var(clusters, "cluster", "NAME=TOKEN,KUBERNETES_PORT,KUBESPHERE_PORT (stands in for a Cluster object)")
	fs.Parse(args)
	if *port > 49151 || *port < 1024 {
		fail("please don't set agent port out of range (1024, 49151)")
	}
	ca, key := loadCA(*caCert, *caKey)
	hostKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader) // a fresh key per process
	if err != nil {
		fail(err.Error())
	}
	signer, err := ssh.NewSignerFromKey(hostKey)
	if err != nil {
		fail(err.Error())
	}
	p := &proxyServer{
		host: *host, publish: *publish, clusters: clusters, ca: ca, caKey: key,
		served: map[string]*clusterEndpoints{},
		sshConfig: &ssh.ServerConfig{
			ServerVersion: serverIdent,
			PasswordCallback: func(c ssh.ConnMetadata, _ []byte) (*ssh.Permissions, error) {
				say("AUTH", fmt.Sprintf("user=%q", c.User())) // any user and password
				return nil, nil
			},
		},
	}
	p.sshConfig.AddHostKey(signer)
	ln, err := net.Listen("tcp", net.JoinHostPort(*host, strconv.Itoa(*port)))
	if err != nil {
		fail(err.Error())
	}
	say("LISTEN", *port)
	fail("serve: " + http.Serve(ln, http.HandlerFunc(p.route)).Error())
}

// route is the agent port: a WebSocket upgrade whose Sec-WebSocket-Protocol header, taken whole,
// is exactly kubesphere-v1 carries an agent; any other kubesphere-* is ignored and, like every
// other request, falls through to /health, /version (URL compared with its query) or 404.
func (p *proxyServer) route(w http.ResponseWriter, r *http.Request) {
	upgrade := strings.ToLower(r.Header.Get("Upgrade"))
	protocol := r.Header.Get("Sec-WebSocket-Protocol")
	if upgrade == "websocket" && strings.HasPrefix(protocol, "kubesphere-") {
		if protocol == protocolVersion {
			p.serveAgent(w, r)
			return
		}
		say("IGNORED-PROTOCOL", protocol)
	}
	switch r.URL.String() {
	case "/health":
		w.Write([]byte("OK\n"))
	case "/version":
		w.Write([]byte(buildVersion))
	default:
		w.WriteHeader(http.StatusNotFound)
		w.Write([]byte("Not Found"))
	}
}

// serveAgent runs one agent connection. Only the first request counts, within 10 s: not
// `config` → "expecting config request"; undecodable → no reply at all; unknown name or other
// token (compared with ==) → "Unauthorized agent". None of these closes the connection. On
// success the cluster's endpoints start (or gain this session), then the reply, then pings are
// answered and any other request is left unanswered.
func (p *proxyServer) serveAgent(w http.ResponseWriter, r *http.Request) {
	ws, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		say("UPGRADE-FAILED", err)
		return
	}
	conn, chans, reqs, err := ssh.NewServerConn(&streamConn{Conn: ws}, p.sshConfig)
	if err != nil {
		say("HANDSHAKE-FAILED", err)
		return
	}
	say("CLIENT-VERSION", string(conn.ClientVersion()))
	var req *ssh.Request
	select {
	case req = <-reqs:
	case <-time.After(10 * time.Second):
		say("NO-CONFIG")
		conn.Close()
		return
	}
	if req == nil {
		return
	}
	if req.Type != "config" {
		say("CONFIG-REFUSED", "expecting config request")
		req.Reply(false, []byte("expecting config request"))
		return
	}
	say("CONFIG", string(req.Payload))
	cfg, err := decodeConfig(req.Payload)
	if err != nil {
		say("CONFIG-UNREADABLE", err)
		return
	}
	cl, ok := p.clusters[cfg.Name]
	if !ok || cfg.Token != cl.token {
		say("CONFIG-REFUSED", "Unauthorized agent", cfg.Name)
		req.Reply(false, []byte("Unauthorized agent"))
		return
	}
	sess, err := p.addSession(cl, conn, cfg)
	if err != nil {
		say("CONFIG-REFUSED", err)
		req.Reply(false, []byte(err.Error()))
		return
	}
	req.Reply(true, nil)
	say("CONNECTED", cl.name)
	go func() {
		for r := range reqs {
			if r.Type == "ping" {
				r.Reply(true, nil)
				say("PING")
				continue
			}
			say("REQUEST", r.Type, "(no reply)")
		}
	}()
	go serveAgentChannels(chans)
	conn.Wait()
	say("CLOSED", cl.name)
	p.removeSession(cl.name, sess)
}

// serveAgentChannels: the original proxy accepts channels an agent opens and dials their extra
// data, inside the host's network.
func serveAgentChannels(chans <-chan ssh.NewChannel) {
	for nc := range chans {
		target := string(nc.ExtraData())
		say("AGENT-CHANNEL", target)
		ch, reqs, err := nc.Accept()
		if err != nil {
			continue
		}
		go ssh.DiscardRequests(reqs)
		go dialAndPipe(ch, target)
	}
}

// loadCA reads --ca-cert and --ca-key; the original cannot start without them.
func loadCA(certPath, keyPath string) (*x509.Certificate, crypto.Signer) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		fail(fmt.Sprintf("error loading certificate %s, %v", certPath, err))
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		fail(fmt.Sprintf("error loading certificate %s, %v", keyPath, err))
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		fail("CA: no PEM block")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		fail("CA certificate: " + err.Error())
	}
	var key interface{}
	if key, err = x509.ParsePKCS8PrivateKey(kb.Bytes); err != nil {
		if key, err = x509.ParseECPrivateKey(kb.Bytes); err != nil {
			key, err = x509.ParsePKCS1PrivateKey(kb.Bytes)
		}
	}
	signer, ok := key.(crypto.Signer)
	if err != nil || !ok {
		fail(fmt.Sprintf("CA key: %v", err))
	}
	return cert, signer
}
