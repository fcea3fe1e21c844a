package main

// The original proxy's two endpoints per cluster (pkg/proxy/http_proxy.go, proxy_server.go):
// kubernetes over TLS (serving certificate from the CA, client certificates requested and never
// checked) to https://KubernetesSvcHost, kubesphere in plain HTTP to http://KubeSphereSvcHost.
// Each request goes through a tunnel channel whose extra data is the config's host string as
// the agent sent it (no port added). Only the kubernetes endpoint carries the agent's
// credentials: its client certificate, or else its bearer token; the kubesphere endpoint carries
// none. Everything else the client sent, Authorization and Impersonate-* included, passes on.

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	mrand "math/rand"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

type endpoint struct {
	name, scheme, host string // host: the URL host, from the first session's config
	bearer             []byte // attached when set (kubernetes endpoint without a client cert)
	server             *http.Server
	mu                 sync.RWMutex
	transports         []*http.Transport // one per agent session; a request picks one at random
}

type clusterEndpoints struct{ kubernetes, kubesphere *endpoint }

// session is one agent's pair of transports, to take out when it goes.
type session struct{ kubernetes, kubesphere *http.Transport }

// tunnelTransport opens a `kubesphere` channel to target for every connection it needs.
func tunnelTransport(conn ssh.Conn, target string, upstream *tls.Config) *http.Transport {
	return &http.Transport{
		DialContext: func(context.Context, string, string) (net.Conn, error) {
			ch, reqs, err := conn.OpenChannel("kubesphere", []byte(target))
			if err != nil {
				say("OPEN-FAILED", target, err)
				return nil, err
			}
			go ssh.DiscardRequests(reqs)
			return &channelConn{Channel: ch}, nil
		},
		TLSClientConfig: upstream,
	}
}

// upstreamTLS: the agent's CA (the system roots when it sent none) and its client certificate.
func upstreamTLS(cfg *agentConfig) (*tls.Config, bool, error) {
	t := &tls.Config{}
	if len(cfg.CAData) > 0 {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(cfg.CAData)
		t.RootCAs = pool
	}
	if len(cfg.CertData) > 0 && len(cfg.KeyData) > 0 {
		cert, err := tls.X509KeyPair(cfg.CertData, cfg.KeyData)
		if err != nil {
			return nil, false, err
		}
		t.Certificates = []tls.Certificate{cert}
		return t, false, nil
	}
	return t, true, nil
}

// addSession starts the cluster's endpoints with its first session, or adds the session's
// transports to them.
func (p *proxyServer) addSession(cl clusterSpec, conn ssh.Conn, cfg *agentConfig) (*session, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	up, useBearer, err := upstreamTLS(cfg)
	if err != nil {
		return nil, err
	}
	s := &session{
		kubernetes: tunnelTransport(conn, cfg.KubernetesSvcHost, up),
		kubesphere: tunnelTransport(conn, cfg.KubeSphereSvcHost, up),
	}
	if eps, ok := p.served[cl.name]; ok {
		eps.kubernetes.add(s.kubernetes)
		eps.kubesphere.add(s.kubesphere)
		return s, nil
	}
	serving, err := p.servingTLS()
	if err != nil {
		return nil, err
	}
	k8s := &endpoint{name: cl.name + "-kubernetes", scheme: "https", host: cfg.KubernetesSvcHost,
		transports: []*http.Transport{s.kubernetes}}
	if useBearer {
		k8s.bearer = cfg.BearerToken
	}
	ks := &endpoint{name: cl.name + "-kubesphere", scheme: "http", host: cfg.KubeSphereSvcHost,
		transports: []*http.Transport{s.kubesphere}}
	if err := k8s.listen(p.host, cl.kubernetesPort, serving); err != nil {
		return nil, err
	}
	if err := ks.listen(p.host, cl.kubespherePort, nil); err != nil {
		k8s.server.Close()
		return nil, err
	}
	p.served[cl.name] = &clusterEndpoints{kubernetes: k8s, kubesphere: ks}
	say("SERVING", cl.name, "kubernetes", cl.kubernetesPort, "kubesphere", cl.kubespherePort)
	return s, nil
}

// removeSession takes a session out; with the last one the endpoints stop.
func (p *proxyServer) removeSession(name string, s *session) {
	p.mu.Lock()
	defer p.mu.Unlock()
	eps, ok := p.served[name]
	if !ok {
		return
	}
	if eps.kubernetes.remove(s.kubernetes) == 0 || eps.kubesphere.remove(s.kubesphere) == 0 {
		eps.kubernetes.server.Close()
		eps.kubesphere.server.Close()
		delete(p.served, name)
		say("STOPPED", name)
	}
}

func (e *endpoint) add(t *http.Transport) {
	e.mu.Lock()
	e.transports = append(e.transports, t)
	e.mu.Unlock()
}

func (e *endpoint) remove(t *http.Transport) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, x := range e.transports {
		if x == t {
			e.transports = append(e.transports[:i], e.transports[i+1:]...)
			break
		}
	}
	return len(e.transports)
}

// listen binds the endpoint (the original binds every interface; the rendition --host) and serves.
func (e *endpoint) listen(host string, port int, serving *tls.Config) error {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return err
	}
	e.server = &http.Server{Handler: e, TLSConfig: serving}
	go func() {
		if serving != nil {
			ln = tls.NewListener(ln, serving)
		}
		if err := e.server.Serve(ln); err != http.ErrServerClosed {
			say("ENDPOINT-ERROR", e.name, err)
		}
	}()
	return nil
}

// ServeHTTP forwards as the original's upgrade-aware handler does: same path and query, the
// client's Host header kept, its errors only logged (so a failed tunnel answers 200 with an empty
// body: the handler never writes).
func (e *endpoint) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if len(e.bearer) > 0 {
		req = req.Clone(req.Context())
		req.Header.Set("Authorization", fmt.Sprintf("Bearer %s", e.bearer))
	}
	e.mu.RLock()
	t := e.transports[mrand.Intn(len(e.transports))]
	e.mu.RUnlock()
	rp := &httputil.ReverseProxy{
		Director: func(out *http.Request) {
			out.URL.Scheme, out.URL.Host = e.scheme, e.host
			if _, ok := out.Header["User-Agent"]; !ok {
				out.Header.Set("User-Agent", "")
			}
		},
		Transport: t,
		ErrorHandler: func(_ http.ResponseWriter, r *http.Request, err error) {
			say("PROXY-ERROR", e.name, r.URL.Path, err)
		},
	}
	rp.ServeHTTP(w, req)
}

// servingTLS issues the kubernetes endpoint's certificate from the CA for the published address,
// and asks clients for a certificate that nothing verifies.
func (p *proxyServer) servingTLS() (*tls.Config, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "tower"},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip := net.ParseIP(p.publish); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{p.publish}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(p.ca)
	return &tls.Config{
		Certificates:          []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		ClientCAs:             pool,
		ClientAuth:            tls.RequestClientCert,
		VerifyPeerCertificate: func([][]byte, [][]*x509.Certificate) error { return nil },
	}, nil
}

// channelConn is a tunnel channel as a net.Conn: Close closes the channel (no half-close),
// deadlines are ignored, as in the original's utils/ssh_conn.go.
type channelConn struct{ ssh.Channel }

func (c *channelConn) LocalAddr() net.Addr              { return tunnelAddr{} }
func (c *channelConn) RemoteAddr() net.Addr             { return tunnelAddr{} }
func (c *channelConn) SetDeadline(time.Time) error      { return nil }
func (c *channelConn) SetReadDeadline(time.Time) error  { return nil }
func (c *channelConn) SetWriteDeadline(time.Time) error { return nil }

type tunnelAddr struct{}

func (tunnelAddr) Network() string { return "tcp" }
func (tunnelAddr) String() string  { return "" }
