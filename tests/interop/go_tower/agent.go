package main

// The original agent (cmd/agent/app/options.go, pkg/agent/agent.go): flags and their defaults, how
// the proxy URL is completed, the config it sends, the reconnect loop with its backoff, the
// keepalive, and how it serves the proxy's channels.

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/crypto/ssh"
)

type agentOptions struct {
	name, token, server, kubeconfig string
	kubernetesSvc, kubesphereSvc    string
	keepAlive, maxRetryInterval     time.Duration
	maxRetry                        int
}

// parseAgentFlags reads the original agent's flags with the original's defaults.
func parseAgentFlags(args []string) *agentOptions {
	o := &agentOptions{}
	fs := flag.NewFlagSet("agent", flag.ExitOnError)
	fs.StringVar(&o.name, "name", "", "Agent name")
	fs.StringVar(&o.kubernetesSvc, "kubernetes-service", "kubernetes.default.svc", "Kubernetes service name")
	fs.StringVar(&o.kubesphereSvc, "kubesphere-service", "ks-apiserver.kubesphere-system.svc", "KubeSphere service name")
	fs.DurationVar(&o.keepAlive, "keepalive", time.Minute, "Keepalive duration")
	fs.IntVar(&o.maxRetry, "max-retry", 0, "Maximum retries, 0 means never stop")
	fs.DurationVar(&o.maxRetryInterval, "max-retry-interval", 5*time.Minute, "Maximum duration between two retries")
	fs.StringVar(&o.server, "proxy-server", "http://127.0.0.1:8080", "Proxy server address")
	fs.StringVar(&o.token, "token", "", "Token to authenticate with proxy server")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "Use kubeconfig instead of in-cluster config")
	fs.Parse(args)
	return o
}

var endsInDigits = regexp.MustCompile(`\d+$`)

// validate completes the proxy URL as the original does: a host not ending in digits gets :443
// (https, wss) or :80, and the first "http" of the scheme becomes "ws" (http → ws, https → wss).
func (o *agentOptions) validate() error {
	if o.server == "" {
		return fmt.Errorf("invalid proxy server url: %s", o.server)
	}
	u, err := url.Parse(o.server)
	if err != nil {
		return err
	}
	if !endsInDigits.MatchString(u.Host) {
		if u.Scheme == "https" || u.Scheme == "wss" {
			u.Host += ":443"
		} else {
			u.Host += ":80"
		}
	}
	u.Scheme = strings.Replace(u.Scheme, "http", "ws", 1)
	o.server = u.String()
	if o.maxRetryInterval < time.Second {
		o.maxRetryInterval = 5 * time.Minute
	}
	return nil
}

// buildConfig is what the original sends: the service flags as given (no port added), and the
// kube-apiserver and its credentials from the kubeconfig or, in a pod, from the environment and
// the service account. --kubernetes-service is overwritten in both cases.
func buildConfig(o *agentOptions) (*agentConfig, error) {
	c := &agentConfig{
		Version:           buildVersion,
		Name:              o.name,
		Token:             o.token,
		KubernetesSvcHost: o.kubernetesSvc,
		KubeSphereSvcHost: o.kubesphereSvc,
	}
	if o.kubeconfig != "" {
		kc, err := readKubeconfig(o.kubeconfig)
		if err != nil {
			return nil, err
		}
		c.CAData, c.CertData, c.KeyData = kc.caData, kc.certData, kc.keyData
		c.KubernetesSvcHost = strings.TrimPrefix(kc.host, "https://")
		return c, nil
	}
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, errors.New("unable to load in-cluster configuration, KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be defined")
	}
	// GO_TOWER_SA_DIR stands in for the pod's service-account mount in the tests.
	dir := os.Getenv("GO_TOWER_SA_DIR")
	if dir == "" {
		dir = "/var/run/secrets/kubernetes.io/serviceaccount"
	}
	token, err := os.ReadFile(dir + "/token")
	if err != nil {
		return nil, err
	}
	ca, err := os.ReadFile(dir + "/ca.crt")
	if err != nil {
		return nil, err
	}
	c.CAData, c.BearerToken = ca, token // the token file as it is, trailing newline included
	c.KubernetesSvcHost = host + ":" + port
	return c, nil
}

// backoff is github.com/jpillora/backoff as the original configures it: 100 ms × 1.4^attempt,
// at most Max, no jitter.
type backoff struct {
	attempt float64
	max     time.Duration
}

func (b *backoff) next() time.Duration {
	d := time.Duration(float64(100*time.Millisecond) * math.Pow(1.4, b.attempt))
	b.attempt++
	if d > b.max {
		return b.max
	}
	return d
}

type agent struct {
	opts *agentOptions
	cfg  *agentConfig
	ssh  *ssh.ClientConfig
	mu   sync.Mutex
	conn ssh.Conn
}

func runAgent(args []string) {
	o := parseAgentFlags(args)
	if err := o.validate(); err != nil {
		fail(err.Error())
	}
	cfg, err := buildConfig(o)
	if err != nil {
		fail(err.Error())
	}
	a := &agent{opts: o, cfg: cfg, ssh: &ssh.ClientConfig{
		User:            "",
		Auth:            []ssh.AuthMethod{ssh.Password("")},
		ClientVersion:   clientIdent,
		HostKeyCallback: func(string, net.Addr, ssh.PublicKey) error { return nil }, // no check
		Timeout:         30 * time.Second,
	}}
	say("SERVER", o.server)
	if o.keepAlive > 0 {
		go a.keepAlive()
	}
	a.connectionLoop()
	say("EXIT")
}

func (a *agent) setConn(c ssh.Conn) {
	a.mu.Lock()
	a.conn = c
	a.mu.Unlock()
}

// keepAlive sends `ping` every --keepalive while connected; the answer is not looked at, and an
// unanswered ping holds the loop.
func (a *agent) keepAlive() {
	for {
		time.Sleep(a.opts.keepAlive)
		a.mu.Lock()
		c := a.conn
		a.mu.Unlock()
		if c != nil {
			ok, _, err := c.SendRequest("ping", true, nil)
			say("PING", ok, errString(err))
		}
	}
}

// connectionLoop is the original's: retry with backoff after a dial error, a refused config or a
// lost session (at most --max-retry attempts when set); give up at once when the SSH handshake or
// the config request itself fails. A refused config leaves the refused connection open.
func (a *agent) connectionLoop() {
	var connErr error
	b := &backoff{max: a.opts.maxRetryInterval}
	for {
		if connErr != nil {
			attempt := int(b.attempt)
			d := b.next()
			msg := "Connection error: " + connErr.Error()
			if attempt > 0 {
				msg += fmt.Sprintf(" (Attempt: %d", attempt)
				if a.opts.maxRetry > 0 {
					msg += fmt.Sprintf("/%d", a.opts.maxRetry)
				}
				msg += ")"
			}
			say("CONNECTION-ERROR", msg)
			if a.opts.maxRetry > 0 && attempt >= a.opts.maxRetry {
				return
			}
			say("RETRYING", d)
			connErr = nil
			sig := make(chan os.Signal, 1)
			signal.Notify(sig, syscall.SIGHUP)
			select {
			case <-time.After(d):
			case <-sig:
			}
			signal.Stop(sig)
		}
		dialer := websocket.Dialer{
			ReadBufferSize:   1024,
			WriteBufferSize:  1024,
			HandshakeTimeout: 45 * time.Second,
			Subprotocols:     []string{protocolVersion},
		}
		ws, resp, err := dialer.Dial(a.opts.server, http.Header{})
		if err != nil {
			connErr = err
			continue
		}
		// Which subprotocol the proxy selected: the original does not look.
		say("WEBSOCKET", resp.Header.Get("Sec-WebSocket-Protocol"))
		conn, chans, reqs, err := ssh.NewClientConn(&streamConn{Conn: ws}, "", a.ssh)
		if err != nil {
			say("HANDSHAKE-FAILED", err)
			return
		}
		say("SERVER-VERSION", string(conn.ServerVersion()))
		payload := a.cfg.encode()
		say("CONFIG-SENT", string(payload))
		_, reply, err := conn.SendRequest("config", true, payload)
		if err != nil {
			say("CONFIG-FAILED", err)
			return
		}
		// The reply's payload decides, not its success flag: any text is an error.
		if len(reply) > 0 {
			connErr = errors.New(string(reply))
			continue
		}
		say("CONNECTED")
		b.attempt = 0
		a.setConn(conn)
		go discardRequests("REQUEST", reqs)
		go serveChannels(chans)
		err = conn.Wait()
		a.setConn(nil)
		if err != nil && err != io.EOF {
			connErr = err
			continue
		}
		say("DISCONNECTED")
	}
}

// serveChannels accepts every channel the proxy opens, whatever its type, and dials its extra
// data as a raw "host:port" only then: a target that cannot be dialed gives a channel that was
// accepted and is closed at once, with no data.
func serveChannels(chans <-chan ssh.NewChannel) {
	for nc := range chans {
		target := string(nc.ExtraData())
		say("TARGET", target)
		if nc.ChannelType() != "kubesphere" {
			say("CHANNEL-TYPE", nc.ChannelType())
		}
		ch, reqs, err := nc.Accept()
		if err != nil {
			say("ACCEPT-FAILED", err)
			continue
		}
		go ssh.DiscardRequests(reqs)
		go dialAndPipe(ch, target)
	}
}

// dialAndPipe is the original's utils.HandleTCPStream: dial (no timeout), then pipe.
func dialAndPipe(ch io.ReadWriteCloser, target string) {
	conn, err := net.Dial("tcp", target)
	if err != nil {
		say("DIAL-FAILED", target, err)
		ch.Close()
		return
	}
	sent, received := pipe(ch, conn)
	say("STREAM-DONE", target, "sent", sent, "received", received)
}

// discardRequests answers want-reply requests with failure, as ssh.DiscardRequests does, and
// says which ones came.
func discardRequests(key string, reqs <-chan *ssh.Request) {
	for r := range reqs {
		say(key, r.Type)
		if r.WantReply {
			r.Reply(false, nil)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
