// Renders an Ollama TEMPLATE with Go's own text/template, passing data shaped as Ollama passes it to
// templates that use .Messages: System (all system messages joined), Messages (consecutive messages of
// one role merged, system messages kept), Tools, Response (empty), Think, IsThinkSet.
//
// Input (stdin, JSON): {"template": "...", "messages": [{"role": "...", "content": "..."}, ...]}
// Output (stdout): the rendered prompt, nothing else.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

// Message has the fields of Ollama's api.Message that text templates read.
type Message struct {
	Role      string `json:"role"`
	Content   string `json:"content"`
	Thinking  string `json:"thinking"`
	ToolCalls []any  `json:"tool_calls"`
}

type request struct {
	Template string    `json:"template"`
	Messages []Message `json:"messages"`
}

// collate merges consecutive messages of one role and joins the system messages, as Ollama does.
func collate(msgs []Message) (string, []*Message) {
	var system []string
	var collated []*Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			collated[len(collated)-1].Content += "\n\n" + msgs[i].Content
		} else {
			collated = append(collated, &msgs[i])
		}
	}
	return strings.Join(system, "\n\n"), collated
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "bad input:", err)
		os.Exit(2)
	}
	tmpl, err := template.New("").Option("missingkey=zero").Parse(req.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "template does not parse:", err)
		os.Exit(3)
	}
	system, messages := collate(req.Messages)
	data := map[string]any{
		"System":     system,
		"Messages":   messages,
		"Tools":      []any{},
		"Response":   "",
		"Think":      false,
		"IsThinkSet": false,
	}
	if err := tmpl.Execute(os.Stdout, data); err != nil {
		fmt.Fprintln(os.Stderr, "template does not execute:", err)
		os.Exit(4)
	}
}
