package main

// What both ends of the original share: the config payload, the WebSocket seen as a byte stream,
// and the way a tunnelled stream is piped.

import (
	"encoding/json"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// agentConfig is the original's config payload (pkg/agent/config.go): encoding/json in field
// order, strings always present (empty ones too), []byte fields standard base64 and left out when
// empty.
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

// encode is the payload the original agent sends: json.Marshal of the struct.
func (c *agentConfig) encode() []byte {
	b, err := json.Marshal(c)
	if err != nil {
		fail("config: " + err.Error())
	}
	return b
}

// decodeConfig reads a config payload; any decoding error becomes the original's one message.
func decodeConfig(b []byte) (*agentConfig, error) {
	c := &agentConfig{}
	if err := json.Unmarshal(b, c); err != nil {
		return nil, errors.New("invalid json config")
	}
	return c, nil
}

// streamConn turns a WebSocket into the byte stream SSH runs on, as the original's
// pkg/utils/ws_conn.go does: each Write goes out as one binary message; Read returns one message
// at a time and keeps what did not fit for the next Read. A text message is read like a binary one
// (the original logs a warning). Close drops the TCP connection without a close frame.
type streamConn struct {
	*websocket.Conn
	rest []byte
	wmu  sync.Mutex // x/crypto/ssh serialises its writes already; this only guards the rendition
}

func (c *streamConn) Read(p []byte) (int, error) {
	if len(c.rest) == 0 {
		kind, msg, err := c.ReadMessage()
		if err != nil {
			return 0, err
		}
		if kind != websocket.BinaryMessage {
			say("WS-TEXT-MESSAGE", len(msg))
		}
		c.rest = msg
	}
	n := copy(p, c.rest)
	c.rest = c.rest[n:]
	return n, nil
}

func (c *streamConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *streamConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// pipe copies both ways between a and b as the original's pkg/utils/pipe.go does: whichever
// direction ends first (EOF or error) closes both ends at once. Nothing is half-closed (Close,
// never CloseWrite), so what the other direction had not delivered yet is lost.
func pipe(a, b io.ReadWriteCloser) (aToB, bToA int64) {
	var once sync.Once
	closeBoth := func() {
		a.Close()
		b.Close()
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		aToB, _ = io.Copy(b, a)
		once.Do(closeBoth)
	}()
	go func() {
		defer wg.Done()
		bToA, _ = io.Copy(a, b)
		once.Do(closeBoth)
	}()
	wg.Wait()
	return aToB, bToA
}
