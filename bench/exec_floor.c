/* exec_floor: the cost of exec'ing a trivial static program (bench/latency.py) */
int main(void) { return 0; }
