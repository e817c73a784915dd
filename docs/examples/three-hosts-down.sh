#!/usr/bin/env bash
# Undo docs/examples/three-hosts.sh: stop every process of its hosts, remove them and
# the bridge.
for i in 1 2 3; do
  for pid in $(ip netns pids ccops-h$i 2>/dev/null); do kill -TERM $pid; done
done
sleep 5
for i in 1 2 3; do
  for pid in $(ip netns pids ccops-h$i 2>/dev/null); do kill -KILL $pid; done
  ip netns del ccops-h$i 2>/dev/null
  ip link del ccopsv$i 2>/dev/null
done
ip link del ccopsbr 2>/dev/null
true
