// Command go_closer plays the original Go tower (kubesphere/tower v0.2.2) exactly where it ends
// streams: every `kubesphere` channel is piped to its TCP peer with two copies, and when either
// copy ends (EOF or error) both sides are closed at once, the channel with SSH_MSG_CHANNEL_CLOSE
// and no SSH_MSG_CHANNEL_EOF before it (x/crypto/ssh's Channel.Close without CloseWrite). Our
// proxy and agent must lose no byte against it (tests/interop/go_closer_test.ts).
//
//	go_closer agent <proxyURL> <name> <token> <kubernetesSvcHost> <kubesphereSvcHost> [<ca> <cert> <key>]
//	    the original agent: SSH inside a kubesphere-v1 WebSocket to our proxy, `config` with the
//	    member's CA, client certificate and key (PEM files) when given; each channel dials its
//	    target and is piped.
//	go_closer proxy <name> <token>
//	    the original proxy for one agent: prints "LISTEN <port>" (the agent port), then, once our
//	    agent is configured, "CLIENTS <port>": each TCP connection there is piped to a new
//	    channel to the agent's KubeSphereSvcHost, as the original relays an upgraded stream.
//
// Every finished pipe prints "PIPE <target> up=<bytes> down=<bytes>". GO_CLOSER_TIMEOUT (a Go
// duration, default 120s) is the safety net after which the program exits with an error.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"io/ioutil"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/crypto/ssh"
)

const (
	wsProtocol    = "kubesphere-v1"
	serverVersion = "SSH-kubesphere-v1-server"
	clientVersion = "SSH-kubesphere-v1-client"
)

// config is the original's `config` request payload (Go encoding/json: []byte as base64).
type config struct {
	Version           string
	Name              string
	Token             string
	KubernetesSvcHost string
	KubeSphereSvcHost string
	CertData          []byte `json:",omitempty"`
	KeyData           []byte `json:",omitempty"`
	CAData            []byte `json:",omitempty"`
	BearerToken       []byte `json:",omitempty"`
}

var out sync.Mutex

func say(format string, args ...interface{}) {
	out.Lock()
	defer out.Unlock()
	fmt.Printf(format+"\n", args...)
}

func fail(msg string) {
	say("ERROR %s", msg)
	os.Exit(1)
}

func main() {
	limit := 120 * time.Second
	if v := os.Getenv("GO_CLOSER_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			fail("GO_CLOSER_TIMEOUT: " + err.Error())
		}
		limit = d
	}
	time.AfterFunc(limit, func() { fail("timeout") })
	args := os.Args[1:]
	switch {
	case len(args) >= 6 && args[0] == "agent":
		agent(args[1:])
	case len(args) == 3 && args[0] == "proxy":
		proxy(args[1], args[2])
	default:
		fail("usage: go_closer agent <proxyURL> <name> <token> <k8s> <ks> [<ca> <cert> <key>] | proxy <name> <token>")
	}
}

// pipe is the original's utils.Pipe: a copy each way; the first to end closes both.
func pipe(target string, ch ssh.Channel, conn net.Conn) {
	var up, down int64
	var once sync.Once
	closeBoth := func() {
		ch.Close()
		conn.Close()
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		up, _ = io.Copy(conn, ch)
		once.Do(closeBoth)
	}()
	go func() {
		defer wg.Done()
		down, _ = io.Copy(ch, conn)
		once.Do(closeBoth)
	}()
	wg.Wait()
	say("PIPE %s up=%d down=%d", target, up, down)
}

// wsConn is a byte stream over binary WebSocket messages (message boundaries mean nothing).
type wsConn struct {
	ws  *websocket.Conn
	r   io.Reader
	wmu sync.Mutex
}

func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			_, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if err == io.EOF {
			c.r = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

func (c *wsConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsConn) Close() error                       { return c.ws.Close() }
func (c *wsConn) LocalAddr() net.Addr                { return c.ws.LocalAddr() }
func (c *wsConn) RemoteAddr() net.Addr               { return c.ws.RemoteAddr() }
func (c *wsConn) SetDeadline(t time.Time) error      { return c.ws.UnderlyingConn().SetDeadline(t) }
func (c *wsConn) SetReadDeadline(t time.Time) error  { return c.ws.SetReadDeadline(t) }
func (c *wsConn) SetWriteDeadline(t time.Time) error { return c.ws.SetWriteDeadline(t) }

func readPEM(path string) []byte {
	b, err := ioutil.ReadFile(path)
	if err != nil {
		fail(err.Error())
	}
	return b
}

// agent runs the original agent's connection once; channels are accepted, then dialled.
func agent(args []string) {
	u, err := url.Parse(args[0])
	if err != nil {
		fail("proxy url: " + err.Error())
	}
	if u.Scheme == "http" {
		u.Scheme = "ws"
	} else if u.Scheme == "https" {
		u.Scheme = "wss"
	}
	cfg := config{
		Version:           "v0.2.2",
		Name:              args[1],
		Token:             args[2],
		KubernetesSvcHost: args[3],
		KubeSphereSvcHost: args[4],
	}
	if len(args) == 8 {
		cfg.CAData, cfg.CertData, cfg.KeyData = readPEM(args[5]), readPEM(args[6]), readPEM(args[7])
	}
	dialer := websocket.Dialer{Subprotocols: []string{wsProtocol}, HandshakeTimeout: 10 * time.Second}
	ws, _, err := dialer.Dial(u.String(), nil)
	if err != nil {
		fail("websocket: " + err.Error())
	}
	sshConn, chans, reqs, err := ssh.NewClientConn(&wsConn{ws: ws}, "", &ssh.ClientConfig{
		User:            "",
		Auth:            []ssh.AuthMethod{ssh.Password("")},
		ClientVersion:   clientVersion,
		HostKeyCallback: ssh.InsecureIgnoreHostKey(),
		Timeout:         10 * time.Second,
	})
	if err != nil {
		fail("handshake: " + err.Error())
	}
	go ssh.DiscardRequests(reqs)
	payload, _ := json.Marshal(cfg)
	ok, reply, err := sshConn.SendRequest("config", true, payload)
	if err != nil || !ok {
		fail(fmt.Sprintf("config: %v %s", err, reply))
	}
	say("CONFIG ok")
	go func() {
		for range time.Tick(time.Second) {
			if _, _, err := sshConn.SendRequest("ping", true, nil); err != nil {
				return
			}
		}
	}()
	go func() {
		for nc := range chans {
			target := string(nc.ExtraData())
			ch, chReqs, err := nc.Accept()
			if err != nil {
				continue
			}
			go ssh.DiscardRequests(chReqs)
			go func() {
				conn, err := net.Dial("tcp", target)
				if err != nil {
					ch.Close()
					return
				}
				pipe(target, ch, conn)
			}()
		}
	}()
	say("CLOSED %v", sshConn.Wait())
}

// proxy serves one agent of cluster `name`, then pipes client connections to channels.
func proxy(name, token string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		fail(err.Error())
	}
	signer, err := ssh.NewSignerFromKey(key)
	if err != nil {
		fail(err.Error())
	}
	sshConfig := &ssh.ServerConfig{
		PasswordCallback: func(ssh.ConnMetadata, []byte) (*ssh.Permissions, error) { return nil, nil },
		ServerVersion:    serverVersion,
	}
	sshConfig.AddHostKey(signer)
	upgrader := websocket.Upgrader{
		Subprotocols: []string{wsProtocol},
		CheckOrigin:  func(*http.Request) bool { return true },
	}
	var once sync.Once
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		once.Do(func() { serveAgent(&wsConn{ws: ws}, sshConfig, name, token) })
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err.Error())
	}
	say("LISTEN %d", ln.Addr().(*net.TCPAddr).Port)
	if err := http.Serve(ln, handler); err != nil {
		fail("serve: " + err.Error())
	}
}

func serveAgent(c net.Conn, sshConfig *ssh.ServerConfig, name, token string) {
	sconn, chans, reqs, err := ssh.NewServerConn(c, sshConfig)
	if err != nil {
		fail("handshake: " + err.Error())
	}
	go func() {
		for nc := range chans {
			nc.Reject(ssh.Prohibited, "agents may not open channels")
		}
	}()
	configured := make(chan config, 1)
	go func() {
		for req := range reqs {
			switch req.Type {
			case "config":
				var cfg config
				if json.Unmarshal(req.Payload, &cfg) != nil || cfg.Name != name ||
					subtle.ConstantTimeCompare([]byte(cfg.Token), []byte(token)) != 1 {
					req.Reply(false, []byte("Unauthorized agent"))
					continue
				}
				req.Reply(true, nil)
				configured <- cfg
			case "ping":
				req.Reply(true, nil)
			default:
				req.Reply(false, nil)
			}
		}
	}()
	var cfg config
	select {
	case cfg = <-configured:
	case <-time.After(20 * time.Second):
		fail("no config")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err.Error())
	}
	say("CLIENTS %d", ln.Addr().(*net.TCPAddr).Port)
	for {
		conn, err := ln.Accept()
		if err != nil {
			fail(err.Error())
		}
		go func() {
			ch, chReqs, err := sconn.OpenChannel("kubesphere", []byte(cfg.KubeSphereSvcHost))
			if err != nil {
				conn.Close()
				return
			}
			go ssh.DiscardRequests(chReqs)
			pipe(cfg.KubeSphereSvcHost, ch, conn)
		}()
	}
}
