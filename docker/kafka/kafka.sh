#!/bin/bash
# Kafka 3.9 as one KRaft node, configured from the environment the way the apache/kafka
# image is: every KAFKA_FOO_BAR variable becomes foo.bar in server.properties (so
# KAFKA_LISTENERS -> listeners). CLUSTER_ID formats the log directory on first start;
# KAFKA_HEAP_OPTS sizes the JVM.
#   kafka.sh start     format (once) and run the broker
#   kafka.sh config    print the server.properties the environment makes
#   kafka.sh health    exit 0 when the broker answers on localhost:9092
set -euo pipefail
libs=/opt/kafka/libs
config=/var/lib/kafka/server.properties
java_opts=(${KAFKA_HEAP_OPTS:--Xmx512m -Xms128m} -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -Djava.awt.headless=true -Dlog4j.configuration=file:/opt/kafka/log4j.properties
    -cp "$libs/*")

properties() {
    local name key
    # log.dirs defaults to the volume; a KAFKA_LOG_DIRS variable overrides it.
    echo "log.dirs=/var/lib/kafka/data"
    for name in $(compgen -e | LC_ALL=C sort); do
        case "$name" in
        KAFKA_HEAP_OPTS | KAFKA_HEALTH_BOOTSTRAP) ;; # the JVM's and the check's, not Kafka's
        KAFKA_*)
            key=${name#KAFKA_}
            key=${key,,}
            echo "${key//_/.}=${!name}"
            ;;
        esac
    done
}

case "${1:-start}" in
start)
    : "${CLUSTER_ID:?CLUSTER_ID must be set (16 bytes, base64url)}"
    properties >"$config"
    if [ ! -e /var/lib/kafka/data/meta.properties ]; then
        java "${java_opts[@]}" kafka.tools.StorageTool format --ignore-formatted \
            -t "$CLUSTER_ID" -c "$config"
    fi
    exec java "${java_opts[@]}" kafka.Kafka "$config"
    ;;
config)
    properties
    ;;
health)
    exec java -Xmx64m -XX:TieredStopAtLevel=1 -cp "$libs/*" kafka.admin.BrokerApiVersionsCommand \
        --bootstrap-server "${KAFKA_HEALTH_BOOTSTRAP:-localhost:9092}" >/dev/null 2>&1
    ;;
*)
    exec "$@"
    ;;
esac
