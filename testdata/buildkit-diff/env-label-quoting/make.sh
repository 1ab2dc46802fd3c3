# ENV and LABEL in their legacy and key=value forms: quotes of both kinds,
# escaped quotes and spaces, continuation lines, a later key on the same line
# not seeing an earlier one, redefinitions, empty values, = inside values.
cat > Dockerfile <<'D'
FROM busybox
ENV legacy two  words   kept
ENV X=1
ENV X=2 Y=$X Z=${X}z
ENV Q1="a \"quoted\" word" Q2='single "dq" $X' Q3=a\ b\ c Q4="multi \
line" Q5=with=equals Q6="" Q7=tab\	x
ENV PATH=/opt/bin:$PATH
LABEL a=1 b="2 3" c='4 $X' "d e"="5" f=6\ 7
LABEL multi="one \
two" a=overridden
LABEL empty=""
LABEL "quoted key"=v x.y.z=dotted
RUN env | grep -E '^(legacy|X|Y|Z|Q[0-9])=' | sort > /envs
D
