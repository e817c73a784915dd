#!/usr/bin/env bash
# A three-host cluster on one machine, as docs/operations.md#three-hosts runs it: hosts
# are network namespaces on a bridge (root and iproute2 needed), each with its own
# directory and HOME. h1 holds NATS server a, the driver and the repository; h2 and h3
# a server and two workers each. Run from a checkout with its venv:
#   sudo docs/examples/three-hosts.sh /tmp/three-hosts      (teardown: three-hosts-down.sh)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CC=${CC:-$ROOT/.venv/bin/claudecluster}
NATS=$("$ROOT/.venv/bin/python" -c 'from claudecluster.runtime.embedded_nats import find_nats_server; print(find_nats_server())')
SRC=$ROOT/nats/cluster
SUB=10.251.7
mkdir -p "$1" && cd "$1"
# 1. The network: a bridge, three hosts h1 h2 h3 at $SUB.2-4.
ip link add ccopsbr type bridge
ip addr add $SUB.1/24 dev ccopsbr
ip link set ccopsbr up
for i in 1 2 3; do
  ip netns add ccops-h$i
  ip link add ccopsv$i type veth peer name eth0 netns ccops-h$i
  ip link set ccopsv$i master ccopsbr up
  ip -n ccops-h$i addr add $SUB.$((i+1))/24 dev eth0
  ip -n ccops-h$i link set eth0 up
  ip -n ccops-h$i link set lo up
  mkdir -p h$i/home
done
# 2. The operator: identities (creds cluster) and a CA with a certificate per server.
mkdir -p operator
$CC creds cluster --dir operator
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout operator/ca.key \
  -out operator/ca.pem -days 30 -subj /CN=claudecluster-ops-ca 2>/dev/null
for i in 1 2 3; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout h$i/server.key \
    -out operator/h$i.csr -subj /CN=h$i 2>/dev/null
  printf "subjectAltName=IP:$SUB.$((i+1))\nextendedKeyUsage=serverAuth,clientAuth\n" > operator/h$i.ext
  openssl x509 -req -in operator/h$i.csr -CA operator/ca.pem -CAkey operator/ca.key \
    -CAcreateserial -out h$i/server.pem -days 30 -extfile operator/h$i.ext 2>/dev/null
  cp operator/ca.pem operator/authorization.conf h$i/
done
# 3. The servers: the committed configs, 127.0.0.1 replaced by each host's address
#    (ports kept), TLS for clients and routes added.
for n in a b c; do
  i=$(( $(printf '%d' "'$n") - 96 ))
  sed -e "s/127.0.0.1:4222/$SUB.2:4222/; s/127.0.0.1:4223/$SUB.3:4223/; s/127.0.0.1:4224/$SUB.4:4224/" \
      -e "s/127.0.0.1:6222/$SUB.2:6222/g; s/127.0.0.1:6223/$SUB.3:6223/g; s/127.0.0.1:6224/$SUB.4:6224/g" \
      -e "s|^cluster {|cluster {\n  tls { cert_file: \"./server.pem\", key_file: \"./server.key\", ca_file: \"./ca.pem\", verify: true }|" \
      $SRC/node-$n.conf > h$i/node-$n.conf
  printf 'tls { cert_file: \"./server.pem\", key_file: \"./server.key\" }\n' >> h$i/node-$n.conf
  (cd h$i && ip netns exec ccops-h$i "$NATS" -c node-$n.conf > nats.log 2>&1 &)
done
URL=tls://$SUB.2:4222,tls://$SUB.3:4223,tls://$SUB.4:4224
# 4. Each host gets its role's seed and the CA, nothing else.
cp operator/creds/driver.nk operator/creds/frontdoor.nk h1/
cp operator/creds/worker.nk h2/; cp operator/creds/worker.nk h3/
# 5. The driver and the repository on h1; two workers on each of h2 and h3.
git init -q h1/repo && git -C h1/repo -c user.name=op -c user.email=op@x commit -q --allow-empty -m base
sleep 3  # the servers elect a JetStream leader
(cd h1 && HOME=$PWD/home CLAUDECLUSTER_NATS__CREDS=$PWD/driver.nk CLAUDECLUSTER_NATS__TLS__CA=$PWD/ca.pem \
  CLAUDECLUSTER_NATS__REPLICAS=3 ip netns exec ccops-h1 $CC driver --nats $URL --work-dir $PWD/driver > driver.log 2>&1 &)
# Workers only after the driver: it applies the topology (streams, buckets), which a
# worker's role may not, and takes the lease.
for _ in $(seq 60); do grep -q "driver leading" h1/driver.log && break; sleep 1; done
cat h1/driver.log
for i in 2 3; do for w in 1 2; do
  (cd h$i && HOME=$PWD/home CLAUDECLUSTER_NATS__TLS__CA=$PWD/ca.pem CLAUDECLUSTER_NATS__REPLICAS=3 \
    ip netns exec ccops-h$i $CC worker --nats $URL --creds $PWD/worker.nk \
    --workspace-root $PWD/workspaces > worker-$w.log 2>&1 &)
done; done
# 6. A run, submitted on h1 as the front door.
cat > h1/plan.yaml <<'PLAN'
goal: three hosts
tasks:
  - {id: t1, title: one, executor: shell, prompt: "echo 1 > one.txt"}
  - {id: t2, title: two, executor: shell, prompt: "echo 2 > two.txt"}
  - {id: t3, title: three, executor: shell, prompt: "echo 3 > three.txt", depends_on: [t1, t2]}
PLAN
cd h1
export HOME=$PWD/home CLAUDECLUSTER_NATS__CREDS=$PWD/frontdoor.nk CLAUDECLUSTER_NATS__TLS__CA=$PWD/ca.pem
ip netns exec ccops-h1 $CC run "three hosts" --plan plan.yaml --repo $PWD/repo --nats $URL --run-id ops3 --detach
for _ in $(seq 60); do
  ip netns exec ccops-h1 $CC status ops3 --nats $URL > status.txt 2>&1 || true
  grep -q -E "state +. (completed|failed)" status.txt && break
  sleep 2
done
cat status.txt
git -C repo log --oneline claudecluster/ops3
