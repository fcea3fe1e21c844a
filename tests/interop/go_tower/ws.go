//go:build websocket

// The ws-agent and ws-proxy modes: the original tower binaries' wire, SSH inside a WebSocket
// (gorilla/websocket, subprotocol kubesphere-v1, binary messages) wrapped as a net.Conn the
// way the original does it (chisel style). Built only with `-tags websocket`, so that the TCP
// modes still build where gorilla/websocket is not installed.

package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/crypto/ssh"
)

const wsProtocol = "kubesphere-v1"

// agentConfig is the original tower's config payload: Go encoding/json, []byte fields
// standard base64 and omitted when empty.
type agentConfig struct {
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

// wsConn carries a byte stream over binary WebSocket messages; message boundaries carry no
// meaning.
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
func (c *wsConn) SetReadDeadline(t time.Time) error  { return c.ws.SetReadDeadline(t) }
func (c *wsConn) SetWriteDeadline(t time.Time) error { return c.ws.SetWriteDeadline(t) }
func (c *wsConn) SetDeadline(t time.Time) error {
	if err := c.ws.SetReadDeadline(t); err != nil {
		return err
	}
	return c.ws.SetWriteDeadline(t)
}

// envDuration reads a Go duration from the environment, or returns def.
func envDuration(name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		fail(name + ": " + err.Error())
	}
	return d
}

// wsAgent behaves like the original agent: dial the proxy over WebSocket, SSH as user ""
// password "", send config, then dial whatever each `kubesphere` channel names and pipe.
func wsAgent(proxyURL, name, token, kubernetesTarget, kubesphereTarget string) {
	u, err := url.Parse(proxyURL)
	if err != nil {
		fail("proxy url: " + err.Error())
	}
	switch u.Scheme {
	case "http":
		u.Scheme = "ws"
	case "https":
		u.Scheme = "wss"
	}
	dialer := websocket.Dialer{Subprotocols: []string{wsProtocol}, HandshakeTimeout: 10 * time.Second}
	ws, resp, err := dialer.Dial(u.String(), nil)
	if err != nil {
		fail("websocket dial " + u.String() + ": " + err.Error())
	}
	fmt.Println("WEBSOCKET", resp.Header.Get("Sec-WebSocket-Protocol"))
	cfg := &ssh.ClientConfig{
		User:            "",
		Auth:            []ssh.AuthMethod{ssh.Password("")},
		ClientVersion:   clientVersion,
		HostKeyCallback: ssh.InsecureIgnoreHostKey(),
		Timeout:         10 * time.Second,
	}
	sshConn, chans, reqs, err := ssh.NewClientConn(&wsConn{ws: ws}, "", cfg)
	if err != nil {
		fail("handshake: " + err.Error())
	}
	fmt.Println("SERVER-VERSION", string(sshConn.ServerVersion()))
	go ssh.DiscardRequests(reqs)
	payload, err := json.Marshal(agentConfig{
		Version:           "v0.1.0",
		Name:              name,
		Token:             token,
		KubernetesSvcHost: kubernetesTarget,
		KubeSphereSvcHost: kubesphereTarget,
	})
	if err != nil {
		fail(err.Error())
	}
	ok, reply, err := sshConn.SendRequest("config", true, payload)
	if err != nil {
		fail("config: " + err.Error())
	}
	if !ok {
		fmt.Println("CONFIG refused", string(reply))
		sshConn.Close()
		os.Exit(0)
	}
	fmt.Println("CONFIG ok")
	go func() {
		every := envDuration("GO_TOWER_PING", 5*time.Second)
		for range time.Tick(every) {
			ok, _, err := sshConn.SendRequest("ping", true, nil)
			if err != nil {
				return
			}
			fmt.Println("PING", ok)
		}
	}()
	go func() {
		for ch := range chans {
			go serveChannel(ch)
		}
	}()
	err = sshConn.Wait()
	fmt.Println("CLOSED", err)
}

// serveChannel dials the raw "host:port" extra data of a `kubesphere` channel and pipes both
// ways, half-closes included.
func serveChannel(ch ssh.NewChannel) {
	if ch.ChannelType() != "kubesphere" {
		ch.Reject(ssh.UnknownChannelType, "unknown channel type")
		return
	}
	target := string(ch.ExtraData())
	fmt.Println("TARGET", target)
	conn, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		ch.Reject(ssh.ConnectionFailed, err.Error())
		return
	}
	stream, reqs, err := ch.Accept()
	if err != nil {
		conn.Close()
		return
	}
	go ssh.DiscardRequests(reqs)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		io.Copy(conn, stream)
		conn.(*net.TCPConn).CloseWrite()
	}()
	go func() {
		defer wg.Done()
		io.Copy(stream, conn)
		stream.CloseWrite()
	}()
	wg.Wait()
	stream.Close()
	conn.Close()
}

// wsProxy behaves like the original proxy for one cluster: upgrade kubesphere-v1 WebSockets,
// SSH server with a fresh ECDSA P-256 key and any password, check the config request, then
// send one HTTP GET through a `kubesphere` channel to the agent's KubeSphereSvcHost.
func wsProxy(name, token string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		fail(err.Error())
	}
	signer, err := ssh.NewSignerFromKey(key)
	if err != nil {
		fail(err.Error())
	}
	config := &ssh.ServerConfig{
		PasswordCallback: func(c ssh.ConnMetadata, pass []byte) (*ssh.Permissions, error) {
			fmt.Printf("AUTH user=%q\n", c.User())
			return nil, nil
		},
		ServerVersion: serverVersion,
	}
	config.AddHostKey(signer)
	upgrader := websocket.Upgrader{
		Subprotocols: []string{wsProtocol},
		CheckOrigin:  func(*http.Request) bool { return true },
	}
	done := make(chan struct{})
	var doneOnce sync.Once
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !websocket.IsWebSocketUpgrade(r) {
			http.NotFound(w, r)
			return
		}
		offered := websocket.Subprotocols(r)
		if len(offered) != 1 || offered[0] != wsProtocol {
			fmt.Println("BAD-PROTOCOL", strings.Join(offered, ","))
			http.Error(w, "unsupported protocol", http.StatusBadRequest)
			return
		}
		ws, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			fmt.Println("UPGRADE-FAILED", err)
			return
		}
		if serveAgent(&wsConn{ws: ws}, config, name, token) {
			doneOnce.Do(func() { close(done) })
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err.Error())
	}
	fmt.Println("LISTEN", ln.Addr().(*net.TCPAddr).Port)
	go func() {
		if err := http.Serve(ln, handler); err != nil {
			fail("serve: " + err.Error())
		}
	}()
	<-done
	fmt.Println("DONE")
}

// serveAgent runs one agent session; true once a request went through it.
func serveAgent(c net.Conn, config *ssh.ServerConfig, name, token string) bool {
	sconn, chans, reqs, err := ssh.NewServerConn(c, config)
	if err != nil {
		fmt.Println("HANDSHAKE-FAILED", err)
		c.Close()
		return false
	}
	defer sconn.Close()
	fmt.Println("CLIENT-VERSION", string(sconn.ClientVersion()))
	go func() {
		for ch := range chans {
			ch.Reject(ssh.Prohibited, "agents may not open channels")
		}
	}()
	configured := make(chan agentConfig, 1)
	go func() {
		for req := range reqs {
			switch req.Type {
			case "config":
				var cfg agentConfig
				if err := json.Unmarshal(req.Payload, &cfg); err != nil {
					fmt.Println("BAD-CONFIG", err)
					req.Reply(false, []byte("Invalid config"))
					sconn.Close()
					continue
				}
				fmt.Printf("CONFIG Version=%s Name=%s KubernetesSvcHost=%s KubeSphereSvcHost=%s"+
					" CAData=%d CertData=%d KeyData=%d BearerToken=%d\n",
					cfg.Version, cfg.Name, cfg.KubernetesSvcHost, cfg.KubeSphereSvcHost,
					len(cfg.CAData), len(cfg.CertData), len(cfg.KeyData), len(cfg.BearerToken))
				if cfg.Name != name || subtle.ConstantTimeCompare([]byte(cfg.Token), []byte(token)) != 1 {
					fmt.Println("REFUSED", cfg.Name)
					req.Reply(false, []byte("Unauthorized agent"))
					sconn.Close()
					continue
				}
				req.Reply(true, nil)
				configured <- cfg
			case "ping":
				req.Reply(true, nil)
			default:
				fmt.Println("REQUEST", req.Type)
				req.Reply(false, nil)
			}
		}
	}()
	var cfg agentConfig
	select {
	case cfg = <-configured:
	case <-time.After(10 * time.Second):
		fmt.Println("NO-CONFIG")
		return false
	}
	ch, chReqs, err := sconn.OpenChannel("kubesphere", []byte(cfg.KubeSphereSvcHost))
	if err != nil {
		fail("open " + cfg.KubeSphereSvcHost + ": " + err.Error())
	}
	go ssh.DiscardRequests(chReqs)
	defer ch.Close()
	req := "GET /interop HTTP/1.1\r\nHost: " + cfg.KubeSphereSvcHost +
		"\r\nUser-Agent: go_tower\r\nConnection: close\r\n\r\n"
	if _, err := io.WriteString(ch, req); err != nil {
		fail("write request: " + err.Error())
	}
	resp, err := http.ReadResponse(bufio.NewReader(ch), nil)
	if err != nil {
		fail("read response: " + err.Error())
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		fail("read body: " + err.Error())
	}
	fmt.Println("RESPONSE", resp.Proto, resp.Status)
	fmt.Println("BODY", string(body))
	return true
}
